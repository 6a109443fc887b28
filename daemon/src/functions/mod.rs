//! The function model and its SQLite store.

mod store;

use std::collections::BTreeMap;

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

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("Function not found: {0}")]
    NotFound(String),
    #[error("Function already exist: {0}")]
    AlreadyExists(String),
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("metadata store failed")]
    Store(#[from] rusqlite::Error),
    #[error("stored function {0} is corrupt: {1}")]
    Corrupt(String, String),
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
}

/// A stored function (`$LATEST`).
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub runtime: Runtime,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub environment: BTreeMap<String, String>,
    pub description: String,
    pub code_sha256_hex: String,
    pub code_sha256_b64: String,
    pub code_size: u64,
    pub last_modified: String,
    /// Bumped by every change; instances of an older revision are retired.
    pub revision: u64,
}

impl Function {
    pub fn arn(&self, region: &str, account: &str) -> String {
        function_arn(region, account, &self.name)
    }
}

pub fn function_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{account}:function:{name}")
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
    validate_environment(&spec.environment)?;
    Ok(runtime)
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
