//! SAM templates: YAML (or JSON) to a checked [`Template`], parameters,
//! and the intrinsic functions `Ref`, `Fn::Sub` and `Fn::GetAtt`.
//!
//! Resolution runs twice. At planning time references to other resources
//! stay symbolic (`{{Ref Queue}}`), so that a resource's definition only
//! changes when its own text or a parameter it uses changes; at apply time
//! each resource is resolved again with the physical names of the ones it
//! depends on, which were applied before it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::StackError;

/// A template larger than this is refused before it is parsed
/// (CloudFormation's limit for a template given by URL).
pub const MAX_TEMPLATE: usize = 1024 * 1024;

pub const TRANSFORM: &str = "AWS::Serverless-2016-10-31";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Function,
    Layer,
    Queue,
    Stream,
}

impl Kind {
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Function => "AWS::Serverless::Function",
            Kind::Layer => "AWS::Serverless::LayerVersion",
            Kind::Queue => "AWS::SQS::Queue",
            Kind::Stream => "AWS::Kinesis::Stream",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Kind::Function, Kind::Layer, Kind::Queue, Kind::Stream]
            .into_iter()
            .find(|k| k.type_name() == s)
    }

    /// The attributes `Fn::GetAtt` may read.
    pub fn attributes(self) -> &'static [&'static str] {
        match self {
            Kind::Function => &["Arn"],
            Kind::Layer => &[],
            Kind::Queue => &["Arn", "QueueName", "QueueUrl"],
            Kind::Stream => &["Arn"],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Parameter {
    pub number: bool,
    pub default: Option<String>,
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: Kind,
    /// With `Globals.Function` merged in.
    pub properties: Map<String, Value>,
    pub metadata: Map<String, Value>,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub value: Value,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub description: String,
    pub parameters: BTreeMap<String, Parameter>,
    pub resources: BTreeMap<String, Resource>,
    pub outputs: BTreeMap<String, Output>,
}

fn unsupported(resource: &str, property: impl Into<String>) -> StackError {
    StackError::Unsupported {
        resource: resource.to_string(),
        property: property.into(),
    }
}

fn invalid(at: impl Into<String>, rule: impl Into<String>) -> StackError {
    StackError::Template {
        at: at.into(),
        rule: rule.into(),
    }
}

/// YAML's value as JSON; a short tag (`!Ref x`) becomes the long form
/// (`{"Ref": "x"}`).
fn to_json(v: serde_yaml_ng::Value, at: &str) -> Result<Value, StackError> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0))
                    .map(Value::Number)
                    .ok_or_else(|| invalid(at, "a number that is not finite"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    _ => return Err(invalid(at, "a mapping key that is not a scalar")),
                };
                let inner = to_json(v, &format!("{at}.{key}"))?;
                out.insert(key, inner);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let name = tag.trim_start_matches('!').to_string();
            let inner = to_json(t.value, at)?;
            let (key, inner) = match name.as_str() {
                "Ref" | "Condition" => (name.clone(), inner),
                "GetAtt" => {
                    let inner = match inner {
                        Value::String(s) => match s.split_once('.') {
                            Some((a, b)) => Value::from(vec![a.to_string(), b.to_string()]),
                            None => {
                                return Err(invalid(
                                    at,
                                    format!("!GetAtt {s}: write Resource.Attribute"),
                                ))
                            }
                        },
                        other => other,
                    };
                    ("Fn::GetAtt".to_string(), inner)
                }
                _ => (format!("Fn::{name}"), inner),
            };
            let mut out = Map::new();
            out.insert(key, inner);
            Value::Object(out)
        }
    })
}

fn as_object(v: Value, at: &str) -> Result<Map<String, Value>, StackError> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(invalid(at, "must be a mapping")),
    }
}

/// A scalar as the string CloudFormation passes around.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// SAM's rule for `Globals`: a resource's own scalar wins, maps merge,
/// lists add up (the globals' first).
fn merge_global(global: &Value, own: Option<Value>) -> Value {
    match (global, own) {
        (g, None) => g.clone(),
        (Value::Object(g), Some(Value::Object(o))) if !is_intrinsic(&Value::Object(o.clone())) => {
            let mut out = g.clone();
            for (k, v) in o {
                let merged = match g.get(&k) {
                    Some(gv) => merge_global(gv, Some(v)),
                    None => v,
                };
                out.insert(k, merged);
            }
            Value::Object(out)
        }
        (Value::Array(g), Some(Value::Array(o))) => {
            let mut out = g.clone();
            out.extend(o);
            Value::Array(out)
        }
        (_, Some(o)) => o,
    }
}

fn is_intrinsic(v: &Value) -> bool {
    match v {
        Value::Object(m) if m.len() == 1 => {
            let k = m.keys().next().expect("one key");
            k == "Ref" || k == "Condition" || k.starts_with("Fn::")
        }
        _ => false,
    }
}

/// Properties `Globals.Function` may set (SAM's list, less what Flint
/// does not deploy).
const GLOBAL_FUNCTION: &[&str] = &[
    "Handler",
    "Runtime",
    "CodeUri",
    "MemorySize",
    "Timeout",
    "Environment",
    "Layers",
    "AutoPublishAlias",
    "ReservedConcurrentExecutions",
    "ProvisionedConcurrencyConfig",
    "EventInvokeConfig",
    "DeadLetterQueue",
    "DeploymentPreference",
    "Description",
    "EphemeralStorage",
    "Architectures",
];

impl Template {
    pub fn parse(text: &str) -> Result<Self, StackError> {
        if text.len() > MAX_TEMPLATE {
            return Err(invalid(
                "template",
                format!("{} bytes is over the limit of {MAX_TEMPLATE}", text.len()),
            ));
        }
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| invalid("template", e.to_string()))?;
        let top = as_object(to_json(yaml, "")?, "template")?;
        let mut description = String::new();
        let mut parameters = BTreeMap::new();
        let mut globals = Map::new();
        let mut resources_raw = None;
        let mut outputs_raw = Map::new();
        for (k, v) in top {
            match k.as_str() {
                "AWSTemplateFormatVersion" | "Metadata" => {}
                "Transform" => {
                    let ok = match &v {
                        Value::String(s) => s == TRANSFORM,
                        Value::Array(a) => a.len() == 1 && a[0] == TRANSFORM,
                        _ => false,
                    };
                    if !ok {
                        return Err(unsupported("Transform", format!("{v}: only {TRANSFORM}")));
                    }
                }
                "Description" => description = scalar(&v).unwrap_or_default(),
                "Parameters" => {
                    for (name, p) in as_object(v, "Parameters")? {
                        parameters.insert(name.clone(), parse_parameter(&name, p)?);
                    }
                }
                "Globals" => {
                    for (section, body) in as_object(v, "Globals")? {
                        if section != "Function" {
                            return Err(unsupported("Globals", section));
                        }
                        globals = as_object(body, "Globals.Function")?;
                        for key in globals.keys() {
                            if !GLOBAL_FUNCTION.contains(&key.as_str()) {
                                return Err(unsupported("Globals.Function", key.clone()));
                            }
                        }
                    }
                }
                "Resources" => resources_raw = Some(as_object(v, "Resources")?),
                "Outputs" => outputs_raw = as_object(v, "Outputs")?,
                other => return Err(unsupported("template", other.to_string())),
            }
        }
        let resources_raw =
            resources_raw.ok_or_else(|| invalid("template", "a template needs Resources"))?;
        if resources_raw.is_empty() {
            return Err(invalid(
                "Resources",
                "a template needs at least one resource",
            ));
        }
        let mut resources = BTreeMap::new();
        for (id, body) in resources_raw {
            if !valid_logical_id(&id) {
                return Err(invalid(
                    format!("Resources.{id}"),
                    "a logical ID is letters and digits only",
                ));
            }
            if parameters.contains_key(&id) {
                return Err(invalid(
                    format!("Resources.{id}"),
                    "a resource and a parameter share this name",
                ));
            }
            resources.insert(id.clone(), parse_resource(&id, body, &globals)?);
        }
        let mut outputs = BTreeMap::new();
        for (name, body) in outputs_raw {
            let mut o = as_object(body, &format!("Outputs.{name}"))?;
            let value = o
                .remove("Value")
                .ok_or_else(|| invalid(format!("Outputs.{name}"), "an output needs a Value"))?;
            let description = o
                .remove("Description")
                .as_ref()
                .and_then(scalar)
                .unwrap_or_default();
            if let Some(k) = o.keys().next() {
                return Err(unsupported(&format!("Outputs.{name}"), k.clone()));
            }
            outputs.insert(name, Output { value, description });
        }
        let t = Template {
            description,
            parameters,
            resources,
            outputs,
        };
        t.check_references()?;
        Ok(t)
    }

    /// Every `Ref`, `Fn::GetAtt` and `${...}` names something that exists,
    /// and the resources do not depend on each other in a circle.
    fn check_references(&self) -> Result<(), StackError> {
        let (params, pseudo) = (BTreeMap::new(), PseudoParams::placeholder());
        let scope = Scope::symbolic(self, &params, &pseudo);
        for (id, r) in &self.resources {
            for d in &r.depends_on {
                if !self.resources.contains_key(d) {
                    return Err(invalid(
                        format!("Resources.{id}.DependsOn"),
                        format!("{d} is not a resource of this template"),
                    ));
                }
            }
            scope.resolve(
                &Value::Object(r.properties.clone()),
                &format!("Resources.{id}.Properties"),
            )?;
        }
        for (name, o) in &self.outputs {
            scope.resolve(&o.value, &format!("Outputs.{name}.Value"))?;
        }
        self.order()?;
        Ok(())
    }

    /// The logical IDs a resource refers to.
    pub fn dependencies(&self, id: &str) -> BTreeSet<String> {
        let r = &self.resources[id];
        let mut out: BTreeSet<String> = r.depends_on.iter().cloned().collect();
        collect_refs(&Value::Object(r.properties.clone()), &mut |name| {
            let base = name.split('.').next().unwrap_or(name);
            if self.resources.contains_key(base) && base != id {
                out.insert(base.to_string());
            }
        });
        out
    }

    /// The resources, each after those it depends on.
    pub fn order(&self) -> Result<Vec<String>, StackError> {
        let mut done: Vec<String> = Vec::new();
        let mut placed = BTreeSet::new();
        let deps: BTreeMap<&String, BTreeSet<String>> = self
            .resources
            .keys()
            .map(|id| (id, self.dependencies(id)))
            .collect();
        while done.len() < self.resources.len() {
            let ready: Vec<&String> = deps
                .iter()
                .filter(|(id, d)| !placed.contains(**id) && d.iter().all(|x| placed.contains(x)))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                let stuck: Vec<&str> = deps
                    .keys()
                    .filter(|id| !placed.contains(**id))
                    .map(|s| s.as_str())
                    .collect();
                return Err(invalid(
                    "Resources",
                    format!("circular dependency between {}", stuck.join(", ")),
                ));
            }
            for id in ready {
                placed.insert(id.clone());
                done.push(id.clone());
            }
        }
        Ok(done)
    }

    /// The parameters' values: overrides, then defaults; a parameter
    /// without either is an error, as is an override of no parameter.
    pub fn parameter_values(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, StackError> {
        for k in overrides.keys() {
            if !self.parameters.contains_key(k) {
                return Err(invalid(
                    format!("ParameterOverrides.{k}"),
                    "the template has no such parameter",
                ));
            }
        }
        let mut out = BTreeMap::new();
        for (name, p) in &self.parameters {
            let v = overrides
                .get(name)
                .cloned()
                .or_else(|| p.default.clone())
                .ok_or_else(|| {
                    invalid(
                        format!("Parameters.{name}"),
                        "no value given and no Default",
                    )
                })?;
            if !p.allowed.is_empty() && !p.allowed.contains(&v) {
                return Err(invalid(
                    format!("Parameters.{name}"),
                    format!("{v:?} is not one of {}", p.allowed.join(", ")),
                ));
            }
            if p.number && v.parse::<f64>().is_err() {
                return Err(invalid(
                    format!("Parameters.{name}"),
                    format!("{v:?} is not a Number"),
                ));
            }
            out.insert(name.clone(), v);
        }
        Ok(out)
    }
}

fn valid_logical_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

fn parse_parameter(name: &str, v: Value) -> Result<Parameter, StackError> {
    let at = format!("Parameters.{name}");
    let mut number = false;
    let mut default = None;
    let mut allowed = Vec::new();
    for (k, v) in as_object(v, &at)? {
        match k.as_str() {
            "Type" => match v.as_str() {
                Some("String") => {}
                Some("Number") => number = true,
                _ => return Err(unsupported(&at, format!("Type {v}: String or Number"))),
            },
            "Default" => default = scalar(&v),
            "AllowedValues" => {
                allowed = v
                    .as_array()
                    .ok_or_else(|| invalid(&at, "AllowedValues is a list"))?
                    .iter()
                    .filter_map(scalar)
                    .collect()
            }
            "Description" | "ConstraintDescription" => {}
            other => return Err(unsupported(&at, other.to_string())),
        }
    }
    Ok(Parameter {
        number,
        default,
        allowed,
    })
}

fn parse_resource(
    id: &str,
    body: Value,
    globals: &Map<String, Value>,
) -> Result<Resource, StackError> {
    let at = format!("Resources.{id}");
    let mut kind = None;
    let mut properties = Map::new();
    let mut metadata = Map::new();
    let mut depends_on = Vec::new();
    for (k, v) in as_object(body, &at)? {
        match k.as_str() {
            "Type" => {
                let t = v.as_str().unwrap_or_default().to_string();
                kind = Some(Kind::parse(&t).ok_or_else(|| unsupported(id, format!("Type {t}")))?);
            }
            "Properties" => properties = as_object(v, &format!("{at}.Properties"))?,
            "Metadata" => metadata = as_object(v, &format!("{at}.Metadata"))?,
            "DependsOn" => {
                depends_on = match v {
                    Value::String(s) => vec![s],
                    Value::Array(a) => a.iter().filter_map(scalar).collect(),
                    _ => return Err(invalid(format!("{at}.DependsOn"), "a name or a list")),
                }
            }
            other => return Err(unsupported(id, other.to_string())),
        }
    }
    let kind = kind.ok_or_else(|| invalid(&at, "a resource needs a Type"))?;
    if kind == Kind::Function {
        for (k, g) in globals {
            let own = properties.remove(k);
            properties.insert(k.clone(), merge_global(g, own));
        }
    }
    Ok(Resource {
        kind,
        properties,
        metadata,
        depends_on,
    })
}

/// Calls `f` with every name a `Ref`, `Fn::GetAtt` or `${}` mentions
/// (`Res.Attr` for an attribute).
fn collect_refs(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("Ref") => {
            if let Some(s) = m["Ref"].as_str() {
                f(s)
            }
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("Fn::GetAtt") => {
            if let Some(a) = m["Fn::GetAtt"].as_array() {
                if let Some(s) = a.first().and_then(|x| x.as_str()) {
                    f(s)
                }
            }
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("Fn::Sub") => {
            let (text, vars) = match &m["Fn::Sub"] {
                Value::String(s) => (s.as_str(), None),
                Value::Array(a) if a.len() == 2 => (a[0].as_str().unwrap_or(""), Some(&a[1])),
                _ => ("", None),
            };
            let local: BTreeSet<String> = vars
                .and_then(|v| v.as_object())
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for name in sub_names(text) {
                if !local.contains(&name) {
                    f(&name)
                }
            }
            if let Some(v) = vars {
                collect_refs(v, f)
            }
        }
        Value::Object(m) => m.values().for_each(|v| collect_refs(v, f)),
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, f)),
        _ => {}
    }
}

/// The `${Name}` placeholders of a `Fn::Sub` string (`${!x}` is a
/// literal `${x}`).
fn sub_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let name = &after[..j];
                if !name.starts_with('!') {
                    out.push(name.trim().to_string());
                }
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// `AWS::StackName` and the rest of CloudFormation's pseudo parameters.
#[derive(Debug, Clone)]
pub struct PseudoParams {
    pub stack_name: String,
    pub stack_id: String,
    pub region: String,
    pub account: String,
}

impl PseudoParams {
    fn placeholder() -> Self {
        Self {
            stack_name: "stack".into(),
            stack_id: "stack-id".into(),
            region: "region".into(),
            account: "000000000000".into(),
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "AWS::StackName" => self.stack_name.clone(),
            "AWS::StackId" => self.stack_id.clone(),
            "AWS::Region" => self.region.clone(),
            "AWS::AccountId" => self.account.clone(),
            "AWS::Partition" => "aws".into(),
            "AWS::URLSuffix" => "amazonaws.com".into(),
            _ => return None,
        })
    }
}

/// What an applied resource answers to `Ref` and `Fn::GetAtt`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Physical {
    pub reference: String,
    pub attributes: BTreeMap<String, String>,
}

/// Where names are looked up while resolving.
pub struct Scope<'a> {
    template: &'a Template,
    params: &'a BTreeMap<String, String>,
    pseudo: &'a PseudoParams,
    /// `None`: planning; references to resources stay symbolic.
    applied: Option<&'a BTreeMap<String, Physical>>,
}

impl<'a> Scope<'a> {
    pub fn symbolic(
        template: &'a Template,
        params: &'a BTreeMap<String, String>,
        pseudo: &'a PseudoParams,
    ) -> Self {
        Self {
            template,
            params,
            pseudo,
            applied: None,
        }
    }

    pub fn applied(
        template: &'a Template,
        params: &'a BTreeMap<String, String>,
        pseudo: &'a PseudoParams,
        applied: &'a BTreeMap<String, Physical>,
    ) -> Self {
        Self {
            template,
            params,
            pseudo,
            applied: Some(applied),
        }
    }

    /// `Ref name`: a parameter, a pseudo parameter, a resource, or SAM's
    /// `Function.Alias` / `Function.Version`.
    fn reference(&self, name: &str, at: &str) -> Result<String, StackError> {
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        if self.template.parameters.contains_key(name) && self.applied.is_none() {
            return Ok(format!("{{{{Param {name}}}}}"));
        }
        if let Some(v) = self.pseudo.get(name) {
            return Ok(v);
        }
        let (base, sub) = match name.split_once('.') {
            Some((b, s)) => (b, Some(s)),
            None => (name, None),
        };
        let Some(r) = self.template.resources.get(base) else {
            return Err(invalid(
                at,
                format!("Ref {name}: no parameter or resource of that name"),
            ));
        };
        if let Some(s) = sub {
            if r.kind != Kind::Function || !matches!(s, "Alias" | "Version") {
                return Err(invalid(
                    at,
                    format!("Ref {name}: only a function has .Alias and .Version"),
                ));
            }
            if !r.properties.contains_key("AutoPublishAlias") {
                return Err(invalid(
                    at,
                    format!("Ref {name}: {base} has no AutoPublishAlias"),
                ));
            }
        }
        match self.applied {
            None => Ok(format!("{{{{Ref {name}}}}}")),
            Some(a) => {
                let p = a
                    .get(base)
                    .ok_or_else(|| invalid(at, format!("Ref {name}: {base} is not applied yet")))?;
                Ok(match sub {
                    None => p.reference.clone(),
                    Some(s) => p.attributes.get(s).cloned().unwrap_or_default(),
                })
            }
        }
    }

    fn attribute(&self, res: &str, attr: &str, at: &str) -> Result<String, StackError> {
        let Some(r) = self.template.resources.get(res) else {
            return Err(invalid(
                at,
                format!("Fn::GetAtt {res}.{attr}: no resource {res}"),
            ));
        };
        if !r.kind.attributes().contains(&attr) {
            return Err(unsupported(
                res,
                format!("attribute {attr} (Fn::GetAtt at {at})"),
            ));
        }
        match self.applied {
            None => Ok(format!("{{{{GetAtt {res}.{attr}}}}}")),
            Some(a) => a
                .get(res)
                .and_then(|p| p.attributes.get(attr).cloned())
                .ok_or_else(|| invalid(at, format!("Fn::GetAtt {res}.{attr}: not applied yet"))),
        }
    }

    fn sub(&self, text: &str, vars: &Map<String, Value>, at: &str) -> Result<String, StackError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let j = after
                .find('}')
                .ok_or_else(|| invalid(at, "Fn::Sub: a ${ without its }"))?;
            let name = after[..j].trim();
            if let Some(lit) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(lit);
                out.push('}');
            } else if let Some(v) = vars.get(name) {
                let v = self.resolve(v, at)?;
                out.push_str(
                    &scalar(&v)
                        .ok_or_else(|| invalid(at, format!("Fn::Sub: {name} is not a scalar")))?,
                );
            } else if let Some((res, attr)) = name.split_once('.').filter(|(b, _)| {
                self.template
                    .resources
                    .get(*b)
                    .is_some_and(|r| r.kind.attributes().contains(&&name[b.len() + 1..]))
            }) {
                out.push_str(&self.attribute(res, attr, at)?);
            } else {
                out.push_str(&self.reference(name, at)?);
            }
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `v` with every intrinsic function replaced by its value.
    pub fn resolve(&self, v: &Value, at: &str) -> Result<Value, StackError> {
        match v {
            Value::Object(m) if m.len() == 1 && is_intrinsic(v) => {
                let (k, arg) = m.iter().next().expect("one key");
                match k.as_str() {
                    "Ref" => {
                        let name = arg
                            .as_str()
                            .ok_or_else(|| invalid(at, "Ref takes a name"))?;
                        Ok(Value::String(self.reference(name, at)?))
                    }
                    "Fn::GetAtt" => {
                        let parts: Vec<&str> = arg
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        if parts.len() != 2 {
                            return Err(invalid(at, "Fn::GetAtt takes [Resource, Attribute]"));
                        }
                        Ok(Value::String(self.attribute(parts[0], parts[1], at)?))
                    }
                    "Fn::Sub" => {
                        let empty = Map::new();
                        let (text, vars) = match arg {
                            Value::String(s) => (s.as_str(), &empty),
                            Value::Array(a) if a.len() == 2 => (
                                a[0].as_str()
                                    .ok_or_else(|| invalid(at, "Fn::Sub: a string first"))?,
                                a[1].as_object()
                                    .ok_or_else(|| invalid(at, "Fn::Sub: a mapping second"))?,
                            ),
                            _ => {
                                return Err(invalid(
                                    at,
                                    "Fn::Sub takes a string or [string, mapping]",
                                ))
                            }
                        };
                        Ok(Value::String(self.sub(text, vars, at)?))
                    }
                    other => Err(unsupported(at, format!("intrinsic function {other}"))),
                }
            }
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), self.resolve(v, &format!("{at}.{k}"))?);
                }
                Ok(Value::Object(out))
            }
            Value::Array(a) => Ok(Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| self.resolve(v, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            )),
            other => Ok(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: {Type: String, Default: dev, AllowedValues: [dev, prod]}
Globals:
  Function:
    Runtime: python3.11
    Timeout: 5
    Environment: {Variables: {STAGE: !Ref Stage}}
Resources:
  Deps:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: layer/}
  Jobs:
    Type: AWS::SQS::Queue
  Api:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Layers: [!Ref Deps]
      Environment: {Variables: {QUEUE: !GetAtt Jobs.Arn, NAME: !Sub "${AWS::StackName}-${Stage}"}}
Outputs:
  ApiName: {Value: !Ref Api}
"#;

    #[test]
    fn globals_merge_and_references_resolve_in_order() {
        let t = Template::parse(T).unwrap();
        let api = &t.resources["Api"];
        assert_eq!(api.properties["Timeout"], 5);
        let vars = &api.properties["Environment"]["Variables"];
        assert!(vars.get("STAGE").is_some() && vars.get("QUEUE").is_some());
        let order = t.order().unwrap();
        let pos = |x: &str| order.iter().position(|o| o == x).unwrap();
        assert!(pos("Deps") < pos("Api") && pos("Jobs") < pos("Api"));
        let params = t.parameter_values(&BTreeMap::new()).unwrap();
        let pseudo = PseudoParams::placeholder();
        let s = Scope::symbolic(&t, &params, &pseudo);
        let v = s
            .resolve(&Value::Object(api.properties.clone()), "Api")
            .unwrap();
        assert_eq!(v["Environment"]["Variables"]["NAME"], "stack-dev");
        assert_eq!(
            v["Environment"]["Variables"]["QUEUE"],
            "{{GetAtt Jobs.Arn}}"
        );
        let mut applied = BTreeMap::new();
        applied.insert(
            "Jobs".to_string(),
            Physical {
                reference: "jobs".into(),
                attributes: [("Arn".to_string(), "arn:q".to_string())].into(),
            },
        );
        applied.insert("Deps".to_string(), Physical::default());
        let s = Scope::applied(&t, &params, &pseudo, &applied);
        let v = s
            .resolve(&Value::Object(api.properties.clone()), "Api")
            .unwrap();
        assert_eq!(v["Environment"]["Variables"]["QUEUE"], "arn:q");
    }

    #[test]
    fn what_flint_does_not_deploy_is_named() {
        let bad = T.replace("Type: AWS::SQS::Queue", "Type: AWS::DynamoDB::Table");
        let e = Template::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("Jobs") && e.contains("AWS::DynamoDB::Table"),
            "{e}"
        );
        let bad = T.replace("Outputs:", "Conditions: {}\nOutputs:");
        assert!(Template::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("Conditions"));
        let bad = T.replace("!Ref Deps", "!Join [',', [a]]");
        let e = Template::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("Fn::Join") && e.contains("Resources.Api.Properties.Layers"),
            "{e}"
        );
        let bad = T.replace("!GetAtt Jobs.Arn", "!GetAtt Jobs.Nope");
        assert!(Template::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("Nope"));
        let bad = T.replace("!Ref Deps", "!Ref Missing");
        assert!(Template::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("Missing"));
    }

    #[test]
    fn parameters_are_checked() {
        let t = Template::parse(T).unwrap();
        let mut o = BTreeMap::new();
        o.insert("Stage".to_string(), "qa".to_string());
        assert!(t.parameter_values(&o).is_err());
        o.insert("Stage".to_string(), "prod".to_string());
        assert_eq!(t.parameter_values(&o).unwrap()["Stage"], "prod");
        o.insert("Other".to_string(), "x".to_string());
        assert!(t.parameter_values(&o).is_err());
    }

    #[test]
    fn hostile_yaml_is_refused_quickly() {
        // Aliases that expand to billions of nodes.
        let mut t = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("a{}", i - 1)
            };
            t.push_str(&format!("a{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        t.push_str("Resources: *a11\n");
        let started = std::time::Instant::now();
        assert!(Template::parse(&t).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Nesting deeper than the parser recurses.
        let deep = format!("Resources: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(Template::parse(&deep).is_err());
        // Over the size limit.
        let big = format!("Description: {}\nResources: {{}}", "x".repeat(MAX_TEMPLATE));
        assert!(Template::parse(&big)
            .unwrap_err()
            .to_string()
            .contains("limit"));
    }

    #[test]
    fn a_circle_is_refused() {
        let t = r#"
Resources:
  A: {Type: AWS::SQS::Queue, DependsOn: B}
  B: {Type: AWS::SQS::Queue, DependsOn: A}
"#;
        assert!(Template::parse(t)
            .unwrap_err()
            .to_string()
            .contains("circular"));
    }
}
