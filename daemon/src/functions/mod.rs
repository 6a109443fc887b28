//! The function model — functions, published versions, aliases, layers —
//! its validation rules, and its SQLite store.
//!
//! Why one file of 800 lines: the model's rules (names, ARNs, qualifiers,
//! limits) are Lambda's and are checked together by the tests at the
//! bottom, which are a third of it.

pub mod event_config;
pub mod scaling;
mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use store::FunctionStore;

use crate::packages::Runtime;

pub const MIN_MEMORY_MB: u32 = 128;
pub const MAX_MEMORY_MB: u32 = 10_240;
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const MIN_TIMEOUT_S: u32 = 1;
pub const MAX_TIMEOUT_S: u32 = 900;
pub const DEFAULT_TIMEOUT_S: u32 = 3;
/// Lambda's limit on all environment variables together.
pub const MAX_ENVIRONMENT_BYTES: usize = 4 * 1024;
pub const MIN_EPHEMERAL_MB: u32 = 512;
pub const MAX_EPHEMERAL_MB: u32 = 10_240;
/// Lambda's limit on layers per function.
pub const MAX_LAYERS: usize = 5;
/// The unpublished version every function has.
pub const LATEST: &str = "$LATEST";

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("Function not found: {0}")]
    NotFound(String),
    #[error("Function already exist: {0}")]
    AlreadyExists(String),
    #[error("Alias not found: {0}")]
    AliasNotFound(String),
    #[error("Alias already exists: {0}")]
    AliasExists(String),
    #[error("Layer version not found: {0}")]
    LayerNotFound(String),
    #[error("No Provisioned Concurrency Config found for this function: {0}")]
    ProvisionedNotFound(String),
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("{0}")]
    ScalingInvalid(String),
    #[error("The function {0} doesn't have an EventInvokeConfig")]
    EventConfigNotFound(String),
    #[error("No scalable target or scaling policy found: {0}")]
    ScalingNotFound(String),
    #[error("The Revision Id provided does not match the latest Revision Id ({current}); call GetFunction to get the latest Revision Id")]
    PreconditionFailed { current: String },
    #[error("The operation cannot be performed at this time: function {0} is being updated by another call; try again")]
    UpdateConflict(String),
    #[error("metadata store failed")]
    Store(#[from] rusqlite::Error),
    #[error("stored function {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// A provisioned-concurrency config of a published version or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedConfig {
    pub function: String,
    pub qualifier: String,
    pub requested: u32,
    pub last_modified: String,
}

impl ProvisionedConfig {
    /// Its name in the pool's books: `function:qualifier`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.function, self.qualifier)
    }
}

fn invalid(field: &'static str, rule: impl Into<String>) -> FunctionsError {
    FunctionsError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// What a caller asks for when creating a function, before validation.
#[derive(Debug, Clone, Default)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub environment: BTreeMap<String, String>,
    pub description: String,
    pub layers: Vec<String>,
    pub ephemeral_mb: u32,
    /// `DeadLetterConfig.TargetArn`: the queue that receives asynchronous
    /// events that failed for good.
    pub dead_letter_target: Option<String>,
    pub network: crate::network::NetworkConfig,
}

/// A change of `$LATEST`'s configuration: only the fields that are set change.
#[derive(Debug, Clone, Default)]
pub struct ConfigUpdate {
    pub handler: Option<String>,
    pub runtime: Option<String>,
    pub memory_mb: Option<u32>,
    pub timeout_s: Option<u32>,
    pub environment: Option<BTreeMap<String, String>>,
    pub layers: Option<Vec<String>>,
    pub ephemeral_mb: Option<u32>,
    pub description: Option<String>,
    /// `Some("")` removes the dead-letter queue.
    pub dead_letter_target: Option<String>,
    pub network: Option<crate::network::NetworkConfig>,
    /// Apply only if `$LATEST` is still at this `RevisionId`.
    pub revision_id: Option<String>,
}

/// A layer version as a function refers to it. The function keeps the
/// package's digest, so it keeps working after the layer version is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub arn: String,
    pub sha256_hex: String,
    pub code_size: u64,
    pub unzipped_size: u64,
}

/// One version of a function: `$LATEST` (mutable) or a published number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    pub version: String,
    pub runtime: Runtime,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub environment: BTreeMap<String, String>,
    pub description: String,
    pub code_sha256_hex: String,
    pub code_sha256_b64: String,
    pub code_size: u64,
    pub unzipped_size: u64,
    pub layers: Vec<LayerRef>,
    pub ephemeral_mb: u32,
    /// `DeadLetterConfig.TargetArn` (a queue), fixed in a published version.
    #[serde(default)]
    pub dead_letter_target: Option<String>,
    /// Its network (`Mode`, egress rules), fixed in a published version.
    #[serde(default)]
    pub network: crate::network::NetworkConfig,
    pub last_modified: String,
    /// Bumped by every change of `$LATEST`; instances of an older revision
    /// are retired.
    pub revision: u64,
}

impl Function {
    /// Lambda's `RevisionId`: changes with every update of `$LATEST`.
    pub fn revision_id(&self) -> String {
        format!(
            "{}-{}",
            self.revision,
            &self.code_sha256_hex[..12.min(self.code_sha256_hex.len())]
        )
    }

    /// Checks a caller's `RevisionId` precondition against this function.
    pub fn check_revision(&self, expected: Option<&str>) -> Result<(), FunctionsError> {
        match expected {
            Some(r) if r != self.revision_id() => Err(FunctionsError::PreconditionFailed {
                current: self.revision_id(),
            }),
            _ => Ok(()),
        }
    }

    /// A function with default settings and no code, to compute keys from.
    pub fn placeholder() -> Self {
        Function {
            dead_letter_target: None,
            name: String::new(),
            version: LATEST.into(),
            runtime: Runtime::Provided,
            handler: String::new(),
            memory_mb: DEFAULT_MEMORY_MB,
            timeout_s: DEFAULT_TIMEOUT_S,
            environment: BTreeMap::new(),
            description: String::new(),
            code_sha256_hex: String::new(),
            code_sha256_b64: String::new(),
            code_size: 0,
            unzipped_size: 0,
            layers: Vec::new(),
            ephemeral_mb: MIN_EPHEMERAL_MB,
            network: Default::default(),
            last_modified: String::new(),
            revision: 0,
        }
    }

    /// The unqualified ARN.
    pub fn arn(&self, region: &str, account: &str) -> String {
        function_arn(region, account, &self.name)
    }

    /// The ARN qualified with this version.
    pub fn version_arn(&self, region: &str, account: &str) -> String {
        format!("{}:{}", self.arn(region, account), self.version)
    }

    /// Whether two versions run the same code with the same configuration
    /// (what `PublishVersion` compares).
    pub fn same_code_and_configuration(&self, other: &Function) -> bool {
        self.runtime == other.runtime
            && self.handler == other.handler
            && self.memory_mb == other.memory_mb
            && self.timeout_s == other.timeout_s
            && self.environment == other.environment
            && self.code_sha256_hex == other.code_sha256_hex
            && self.layers == other.layers
            && self.ephemeral_mb == other.ephemeral_mb
            && self.dead_letter_target == other.dead_letter_target
            && self.network == other.network
    }
}

pub fn function_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{account}:function:{name}")
}

/// An alias: a name for a version, optionally sending a share of the
/// traffic to a second version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub function: String,
    pub name: String,
    pub version: String,
    pub description: String,
    /// (version, weight in 0..=1).
    pub additional: Option<(String, f64)>,
}

impl Alias {
    pub fn arn(&self, region: &str, account: &str) -> String {
        format!(
            "{}:{}",
            function_arn(region, account, &self.function),
            self.name
        )
    }

    /// The version an invocation goes to, given a uniform sample in [0, 1).
    pub fn route(&self, sample: f64) -> &str {
        match &self.additional {
            Some((v, w)) if sample < *w => v,
            _ => &self.version,
        }
    }
}

/// A published layer version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerVersion {
    pub name: String,
    pub version: u64,
    pub description: String,
    pub compatible_runtimes: Vec<String>,
    pub sha256_hex: String,
    pub sha256_b64: String,
    pub code_size: u64,
    pub unzipped_size: u64,
    pub created: String,
}

impl LayerVersion {
    pub fn layer_arn(&self, region: &str, account: &str) -> String {
        layer_arn(region, account, &self.name)
    }

    pub fn version_arn(&self, region: &str, account: &str) -> String {
        format!("{}:{}", self.layer_arn(region, account), self.version)
    }
}

pub fn layer_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{account}:layer:{name}")
}

/// Splits `arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION`.
pub fn parse_layer_version_arn(arn: &str) -> Result<(String, u64), FunctionsError> {
    let parts: Vec<&str> = arn.split(':').collect();
    let bad = || {
        invalid(
            "Layers",
            format!("{arn:?} is not a layer version ARN (arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION)"),
        )
    };
    if parts.len() != 8 || parts[0] != "arn" || parts[2] != "lambda" || parts[5] != "layer" {
        return Err(bad());
    }
    validate_layer_name(parts[6])?;
    let version = parts[7].parse::<u64>().map_err(|_| bad())?;
    if version == 0 {
        return Err(bad());
    }
    Ok((parts[6].to_string(), version))
}

/// What an invocation or a read names: `$LATEST`, a version, or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    Latest,
    Version(u64),
    Alias(String),
}

/// Parses a qualifier (empty means `$LATEST`).
pub fn parse_qualifier(q: &str) -> Result<Qualifier, FunctionsError> {
    if q.is_empty() || q == LATEST {
        return Ok(Qualifier::Latest);
    }
    if q.chars().all(|c| c.is_ascii_digit()) {
        return match q.parse::<u64>() {
            Ok(v) if v > 0 => Ok(Qualifier::Version(v)),
            _ => Err(invalid(
                "Qualifier",
                format!("{q:?} is not a valid version"),
            )),
        };
    }
    validate_alias_name(q).map_err(|_| {
        invalid(
            "Qualifier",
            format!("{q:?} must be $LATEST, a version number or an alias name"),
        )
    })?;
    Ok(Qualifier::Alias(q.to_string()))
}

/// Lambda's alias-name rule: 1 to 128 of `[A-Za-z0-9_-]`, not all digits.
pub fn validate_alias_name(name: &str) -> Result<(), FunctionsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.chars().all(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "Name",
            format!("alias name {name:?} must be 1 to 128 letters, digits, hyphens or underscores, and not only digits"),
        ))
    }
}

/// Lambda's layer-name rule: 1 to 140 of `[A-Za-z0-9_-]`.
pub fn validate_layer_name(name: &str) -> Result<(), FunctionsError> {
    let ok = !name.is_empty()
        && name.len() <= 140
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "LayerName",
            format!("{name:?} must be 1 to 140 letters, digits, hyphens or underscores"),
        ))
    }
}

/// Checks an alias's routing: at most one additional version, a published
/// one other than the primary, with a weight in [0, 1].
pub fn validate_routing(
    primary: &str,
    additional: &Option<(String, f64)>,
) -> Result<(), FunctionsError> {
    let Some((v, w)) = additional else {
        return Ok(());
    };
    if !(0.0..=1.0).contains(w) || w.is_nan() {
        return Err(invalid(
            "RoutingConfig",
            format!("the weight of version {v} must be between 0.0 and 1.0 (got {w})"),
        ));
    }
    if primary == LATEST || v == LATEST {
        return Err(invalid(
            "RoutingConfig",
            "traffic can only be split between published versions, not $LATEST",
        ));
    }
    if v == primary {
        return Err(invalid(
            "RoutingConfig",
            format!("the additional version {v} is the alias's own version"),
        ));
    }
    Ok(())
}

/// Variables the platform sets; a function may not override them.
pub const RESERVED_VARIABLES: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// Lambda's function-name rule: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn validate_name(name: &str) -> Result<(), FunctionsError> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(
            "FunctionName",
            format!("must be 1 to 64 characters long (got {})", name.len()),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            "FunctionName",
            format!("{name:?} may only contain letters, digits, hyphens and underscores"),
        ));
    }
    Ok(())
}

/// Checks a spec and fills defaults. Returns the runtime.
pub fn validate_spec(spec: &mut FunctionSpec) -> Result<Runtime, FunctionsError> {
    validate_name(&spec.name)?;
    let runtime = Runtime::parse(&spec.runtime).ok_or_else(|| {
        invalid(
            "Runtime",
            format!(
                "{:?} is not supported; supported runtimes are {}",
                spec.runtime,
                Runtime::ALL.map(|r| r.name()).join(", ")
            ),
        )
    })?;
    if spec.handler.is_empty() || spec.handler.len() > 128 {
        return Err(invalid("Handler", "must be 1 to 128 characters long"));
    }
    if spec
        .handler
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("Handler", "must not contain whitespace"));
    }
    if spec.memory_mb == 0 {
        spec.memory_mb = DEFAULT_MEMORY_MB;
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&spec.memory_mb) {
        return Err(invalid(
            "MemorySize",
            format!(
                "must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB} MB (got {})",
                spec.memory_mb
            ),
        ));
    }
    if spec.timeout_s == 0 {
        spec.timeout_s = DEFAULT_TIMEOUT_S;
    }
    if !(MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&spec.timeout_s) {
        return Err(invalid(
            "Timeout",
            format!(
                "must be between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S} seconds (got {})",
                spec.timeout_s
            ),
        ));
    }
    if spec.description.len() > 256 {
        return Err(invalid("Description", "must be at most 256 characters"));
    }
    if spec.ephemeral_mb == 0 {
        spec.ephemeral_mb = MIN_EPHEMERAL_MB;
    }
    validate_ephemeral(spec.ephemeral_mb)?;
    spec.network
        .validate()
        .map_err(|e| invalid("NetworkConfig", e.to_string()))?;
    if spec.layers.len() > MAX_LAYERS {
        return Err(invalid(
            "Layers",
            format!("at most {MAX_LAYERS} layers (got {})", spec.layers.len()),
        ));
    }
    for l in &spec.layers {
        parse_layer_version_arn(l)?;
    }
    validate_environment(&spec.environment)?;
    Ok(runtime)
}

/// A configuration update: AWS rejects a zero, it is not "the default".
pub fn validate_update(u: &ConfigUpdate) -> Result<(), FunctionsError> {
    for (field, v) in [
        ("MemorySize", u.memory_mb),
        ("Timeout", u.timeout_s),
        ("EphemeralStorage", u.ephemeral_mb),
    ] {
        if v == Some(0) {
            return Err(invalid(field, "must be given as a positive number (got 0)"));
        }
    }
    Ok(())
}

/// A version's description: at most 256 characters.
pub fn validate_description(description: &str) -> Result<(), FunctionsError> {
    if description.len() > 256 {
        return Err(invalid("Description", "must be at most 256 characters"));
    }
    Ok(())
}

/// `$LATEST` or a version number.
pub fn validate_version(version: &str) -> Result<(), FunctionsError> {
    if version != LATEST && version.parse::<u64>().is_err() {
        return Err(invalid(
            "FunctionVersion",
            format!("{version:?} must be $LATEST or a version number"),
        ));
    }
    Ok(())
}

/// A layer's compatible runtimes: runtimes this node offers.
pub fn validate_compatible_runtimes(runtimes: &[String]) -> Result<(), FunctionsError> {
    match runtimes.iter().find(|r| Runtime::parse(r).is_none()) {
        Some(r) => Err(invalid(
            "CompatibleRuntimes",
            format!("{r:?} is not a runtime of this node"),
        )),
        None => Ok(()),
    }
}

pub fn validate_ephemeral(mb: u32) -> Result<(), FunctionsError> {
    if (MIN_EPHEMERAL_MB..=MAX_EPHEMERAL_MB).contains(&mb) {
        Ok(())
    } else {
        Err(invalid(
            "EphemeralStorage",
            format!("must be between {MIN_EPHEMERAL_MB} and {MAX_EPHEMERAL_MB} MB (got {mb})"),
        ))
    }
}

pub fn validate_environment(env: &BTreeMap<String, String>) -> Result<(), FunctionsError> {
    let mut total = 0;
    for (k, v) in env {
        let mut chars = k.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(invalid(
                "Environment",
                format!("variable name {k:?} must match [a-zA-Z][a-zA-Z0-9_]*"),
            ));
        }
        if RESERVED_VARIABLES.contains(&k.as_str()) {
            return Err(invalid(
                "Environment",
                format!("{k} is reserved by the runtime and cannot be set"),
            ));
        }
        if v.contains('\0') {
            return Err(invalid(
                "Environment",
                format!("the value of {k} contains a NUL byte"),
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ENVIRONMENT_BYTES {
        return Err(invalid(
            "Environment",
            format!("variables total {total} bytes; the limit is {MAX_ENVIRONMENT_BYTES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            name: "hello".into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            ..Default::default()
        }
    }

    #[test]
    fn updates_descriptions_versions_and_layer_runtimes_are_checked_here() {
        let field = |r: Result<(), FunctionsError>| match r {
            Err(FunctionsError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let zero = ConfigUpdate {
            timeout_s: Some(0),
            ..Default::default()
        };
        assert_eq!(field(validate_update(&zero)), "Timeout");
        assert!(validate_update(&ConfigUpdate::default()).is_ok());
        assert!(validate_description(&"d".repeat(256)).is_ok());
        assert_eq!(field(validate_description(&"d".repeat(257))), "Description");
        assert!(validate_version(LATEST).is_ok() && validate_version("12").is_ok());
        assert_eq!(field(validate_version("live")), "FunctionVersion");
        assert!(validate_compatible_runtimes(&["python3.11".into()]).is_ok());
        assert_eq!(
            field(validate_compatible_runtimes(&["cobol".into()])),
            "CompatibleRuntimes"
        );
    }

    #[test]
    fn defaults_are_filled() {
        let mut s = spec();
        assert_eq!(validate_spec(&mut s).unwrap(), Runtime::Python311);
        assert_eq!((s.memory_mb, s.timeout_s), (128, 3));
    }

    #[test]
    fn names_follow_lambda_rules() {
        validate_name("a-B_9").unwrap();
        for bad in ["", "has space", "dots.no", &"x".repeat(65), "slash/no"] {
            let e = validate_name(bad).unwrap_err();
            assert!(e.to_string().starts_with("FunctionName"), "{e}");
        }
    }

    #[test]
    fn limits_name_the_field() {
        let mut s = spec();
        s.memory_mb = 64;
        assert!(validate_spec(&mut s)
            .unwrap_err()
            .to_string()
            .starts_with("MemorySize"));
        let mut s = spec();
        s.timeout_s = 901;
        assert!(validate_spec(&mut s)
            .unwrap_err()
            .to_string()
            .starts_with("Timeout"));
        let mut s = spec();
        s.runtime = "nodejs20.x".into();
        assert!(validate_spec(&mut s)
            .unwrap_err()
            .to_string()
            .starts_with("Runtime"));
    }

    #[test]
    fn environment_rules() {
        let mut e = BTreeMap::new();
        e.insert("GOOD_1".to_string(), "v".to_string());
        validate_environment(&e).unwrap();
        e.insert("AWS_REGION".into(), "x".into());
        assert!(validate_environment(&e)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        let mut e = BTreeMap::new();
        e.insert("1BAD".to_string(), "v".to_string());
        assert!(validate_environment(&e).is_err());
        let mut e = BTreeMap::new();
        e.insert("BIG".to_string(), "v".repeat(5000));
        assert!(validate_environment(&e)
            .unwrap_err()
            .to_string()
            .contains("limit"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lambda_shaped_names_are_accepted(name in "[A-Za-z0-9_-]{1,64}") {
            prop_assert!(validate_name(&name).is_ok());
        }

        #[test]
        fn names_with_other_characters_are_refused(
            pre in "[A-Za-z0-9_-]{0,20}",
            bad in "[^A-Za-z0-9_-]",
            post in "[A-Za-z0-9_-]{0,20}",
        ) {
            let name = format!("{pre}{bad}{post}");
            prop_assert!(validate_name(&name).is_err());
        }

        #[test]
        fn long_names_are_refused(name in "[a-z]{65,100}") {
            prop_assert!(validate_name(&name).is_err());
        }

        #[test]
        fn numeric_qualifiers_are_versions(v in 1u64..u64::MAX) {
            prop_assert_eq!(parse_qualifier(&v.to_string()).unwrap(), Qualifier::Version(v));
        }

        #[test]
        fn alias_qualifiers_round_trip(name in "[A-Za-z_-][A-Za-z0-9_-]{0,127}") {
            prop_assert_eq!(parse_qualifier(&name).unwrap(), Qualifier::Alias(name.clone()));
            prop_assert!(validate_alias_name(&name).is_ok());
        }

        #[test]
        fn qualifiers_with_separators_are_refused(a in "[a-z]{1,10}", sep in "[:/ .@]", b in "[a-z]{1,10}") {
            let q = format!("{a}{sep}{b}");
            prop_assert!(parse_qualifier(&q).is_err());
        }

        #[test]
        fn layer_arns_round_trip(name in "[A-Za-z0-9_-]{1,140}", v in 1u64..1_000_000) {
            let arn = format!("{}:{v}", layer_arn("us-east-1", "000000000000", &name));
            prop_assert_eq!(parse_layer_version_arn(&arn).unwrap(), (name, v));
        }

        #[test]
        fn malformed_layer_arns_are_refused(s in "[a-z:0-9]{0,60}") {
            // Only the exact 8-part form with "layer" in place can parse.
            prop_assume!(!s.contains(":layer:"));
            prop_assert!(parse_layer_version_arn(&s).is_err());
        }

        #[test]
        fn memory_limits(mb in 0u32..20_000) {
            let mut spec = FunctionSpec {
                name: "f".into(),
                runtime: "provided".into(),
                handler: "h".into(),
                memory_mb: mb,
                ..Default::default()
            };
            let ok = validate_spec(&mut spec).is_ok();
            prop_assert_eq!(ok, mb == 0 || (MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&mb));
        }

        #[test]
        fn timeout_and_ephemeral_limits(t in 0u32..2000, e in 0u32..20_000) {
            let mut spec = FunctionSpec {
                name: "f".into(),
                runtime: "provided".into(),
                handler: "h".into(),
                timeout_s: t,
                ephemeral_mb: e,
                ..Default::default()
            };
            let ok = validate_spec(&mut spec).is_ok();
            let t_ok = t == 0 || (MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&t);
            let e_ok = e == 0 || (MIN_EPHEMERAL_MB..=MAX_EPHEMERAL_MB).contains(&e);
            prop_assert_eq!(ok, t_ok && e_ok);
        }

        #[test]
        fn routing_weights_must_be_a_share(w in -2.0f64..3.0) {
            let r = validate_routing("1", &Some(("2".to_string(), w)));
            prop_assert_eq!(r.is_ok(), (0.0..=1.0).contains(&w));
        }

        #[test]
        fn alias_routing_follows_the_weight(w in 0.0f64..=1.0, sample in 0.0f64..1.0) {
            let a = Alias {
                function: "f".into(),
                name: "a".into(),
                version: "1".into(),
                description: String::new(),
                additional: Some(("2".into(), w)),
            };
            prop_assert_eq!(a.route(sample), if sample < w { "2" } else { "1" });
        }
    }
}
