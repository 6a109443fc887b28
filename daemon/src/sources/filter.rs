//! Event filtering with EventBridge's pattern language, as Lambda applies
//! `FilterCriteria` to the records of an event source.
//!
//! A pattern is a JSON object. A key whose value is an object descends
//! into the record; a key whose value is an array lists matchers, of which
//! one must match the record's value (or, when that value is an array, one
//! of its elements). Matchers: a literal (string, number, `true`, `false`,
//! `null`), `{"prefix": S}`, `{"suffix": S}`, `{"equals-ignore-case": S}`,
//! `{"anything-but": V | [V…] | {"prefix": S} | {"suffix": S}}`,
//! `{"numeric": [OP, N (, OP, N)]}` and `{"exists": BOOL}`.
//! Patterns of a mapping are OR-ed: a record passes when any matches.

use serde_json::Value;

/// Lambda's bounds on `FilterCriteria`.
pub const MAX_FILTERS: usize = 5;
pub const MAX_PATTERN_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("FilterCriteria: at most {MAX_FILTERS} filters (got {0})")]
    TooMany(usize),
    #[error("FilterCriteria: a pattern is at most {MAX_PATTERN_BYTES} bytes (got {0})")]
    TooLong(usize),
    #[error("FilterCriteria: a pattern is not JSON: {0}")]
    NotJson(String),
    #[error("FilterCriteria: {0}")]
    Invalid(String),
}

/// Checked, parsed patterns.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    patterns: Vec<Value>,
}

impl Filters {
    /// Parses and checks the pattern strings of a mapping.
    pub fn parse(patterns: &[String]) -> Result<Self, FilterError> {
        if patterns.len() > MAX_FILTERS {
            return Err(FilterError::TooMany(patterns.len()));
        }
        let mut parsed = Vec::new();
        for p in patterns {
            if p.len() > MAX_PATTERN_BYTES {
                return Err(FilterError::TooLong(p.len()));
            }
            let v: Value =
                serde_json::from_str(p).map_err(|e| FilterError::NotJson(e.to_string()))?;
            check_object(&v)?;
            parsed.push(v);
        }
        Ok(Self { patterns: parsed })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a record passes: no patterns, or any pattern matches.
    pub fn matches(&self, record: &Value) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| matches_object(p, record))
    }
}

fn invalid(m: impl Into<String>) -> FilterError {
    FilterError::Invalid(m.into())
}

fn check_object(p: &Value) -> Result<(), FilterError> {
    let obj = p
        .as_object()
        .ok_or_else(|| invalid("a pattern is a JSON object"))?;
    if obj.is_empty() {
        return Err(invalid("a pattern (or a part of it) is empty"));
    }
    for (k, v) in obj {
        match v {
            Value::Object(_) => check_object(v)?,
            Value::Array(ms) => {
                if ms.is_empty() {
                    return Err(invalid(format!("{k}: an empty list matches nothing")));
                }
                for m in ms {
                    check_matcher(k, m)?;
                }
            }
            _ => {
                return Err(invalid(format!(
                    "{k}: a value is a list of matchers or an object"
                )))
            }
        }
    }
    Ok(())
}

fn check_matcher(key: &str, m: &Value) -> Result<(), FilterError> {
    let Value::Object(o) = m else {
        return match m {
            Value::Array(_) => Err(invalid(format!("{key}: a matcher is not a list"))),
            _ => Ok(()),
        };
    };
    let bad = |what: &str| invalid(format!("{key}: {what}"));
    if o.len() != 1 {
        return Err(bad("a matcher object has exactly one key"));
    }
    let (op, arg) = o.iter().next().expect("one key");
    match op.as_str() {
        "prefix" | "suffix" | "equals-ignore-case" => {
            if !arg.is_string() {
                return Err(bad(&format!("{op} takes a string")));
            }
        }
        "exists" => {
            if !arg.is_boolean() {
                return Err(bad("exists takes true or false"));
            }
        }
        "anything-but" => match arg {
            Value::String(_) | Value::Number(_) => {}
            Value::Array(a)
                if !a.is_empty() && a.iter().all(|v| v.is_string() || v.is_number()) => {}
            Value::Object(inner) if inner.len() == 1 => {
                let (k, v) = inner.iter().next().expect("one key");
                if !(k == "prefix" || k == "suffix") || !v.is_string() {
                    return Err(bad("anything-but takes a prefix or a suffix of a string"));
                }
            }
            _ => {
                return Err(bad(
                    "anything-but takes a value, a list of values, or a prefix",
                ))
            }
        },
        "numeric" => {
            let a = arg
                .as_array()
                .ok_or_else(|| bad("numeric takes a list [OP, N, ...]"))?;
            if a.is_empty() || a.len() > 4 || a.len() % 2 != 0 {
                return Err(bad("numeric takes one or two comparisons"));
            }
            for pair in a.chunks(2) {
                let ok_op = matches!(pair[0].as_str(), Some("=" | "<" | "<=" | ">" | ">="));
                if !ok_op || !pair[1].is_number() {
                    return Err(bad(
                        "numeric comparisons are =, <, <=, > or >= and a number",
                    ));
                }
            }
        }
        other => return Err(bad(&format!("{other} is not a matcher"))),
    }
    Ok(())
}

fn matches_object(pattern: &Value, record: &Value) -> bool {
    let Some(p) = pattern.as_object() else {
        return false;
    };
    p.iter().all(|(k, want)| {
        let got = record.get(k);
        match want {
            Value::Object(_) => got.is_some_and(|g| matches_object(want, g)),
            Value::Array(ms) => ms.iter().any(|m| matches_value(m, got)),
            _ => false,
        }
    })
}

fn matches_value(m: &Value, got: Option<&Value>) -> bool {
    if let Some(Value::Object(o)) = Some(m) {
        if let Some(Value::Bool(want)) = o.get("exists") {
            let present = got.is_some_and(|g| !matches!(g, Value::Array(a) if a.is_empty()));
            return present == *want;
        }
    }
    match got {
        None => false,
        Some(Value::Array(items)) => items.iter().any(|v| matches_scalar(m, v)),
        Some(v) => matches_scalar(m, v),
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn matches_scalar(m: &Value, v: &Value) -> bool {
    match m {
        Value::Object(o) => {
            let (op, arg) = o.iter().next().expect("checked: one key");
            match op.as_str() {
                "prefix" => v
                    .as_str()
                    .zip(arg.as_str())
                    .is_some_and(|(s, p)| s.starts_with(p)),
                "suffix" => v
                    .as_str()
                    .zip(arg.as_str())
                    .is_some_and(|(s, p)| s.ends_with(p)),
                "equals-ignore-case" => v
                    .as_str()
                    .zip(arg.as_str())
                    .is_some_and(|(s, p)| s.eq_ignore_ascii_case(p)),
                "anything-but" => match arg {
                    Value::Array(a) => !a.iter().any(|x| equal(x, v)),
                    Value::Object(inner) => {
                        let (k, p) = inner.iter().next().expect("checked: one key");
                        let (Some(s), Some(p)) = (v.as_str(), p.as_str()) else {
                            return false;
                        };
                        if k == "prefix" {
                            !s.starts_with(p)
                        } else {
                            !s.ends_with(p)
                        }
                    }
                    x => !equal(x, v),
                },
                "numeric" => {
                    let Some(n) = number(v) else { return false };
                    arg.as_array()
                        .expect("checked: a list")
                        .chunks(2)
                        .all(|pair| {
                            let bound = number(&pair[1]).unwrap_or(f64::NAN);
                            match pair[0].as_str() {
                                Some("=") => n == bound,
                                Some("<") => n < bound,
                                Some("<=") => n <= bound,
                                Some(">") => n > bound,
                                Some(">=") => n >= bound,
                                _ => false,
                            }
                        })
                }
                _ => false,
            }
        }
        literal => equal(literal, v),
    }
}

/// Literal equality; numbers compare by value (1 equals 1.0).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(patterns: &[&str]) -> Filters {
        Filters::parse(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn each_matcher() {
        let r = json!({"body": {"kind": "order", "total": 42, "tags": ["a", "b"], "id": "ORD-17.json", "note": null}});
        let yes = [
            r#"{"body": {"kind": ["order"]}}"#,
            r#"{"body": {"kind": ["refund", "order"]}}"#,
            r#"{"body": {"id": [{"prefix": "ORD-"}]}}"#,
            r#"{"body": {"id": [{"suffix": ".json"}]}}"#,
            r#"{"body": {"kind": [{"equals-ignore-case": "ORDER"}]}}"#,
            r#"{"body": {"kind": [{"anything-but": ["refund", "void"]}]}}"#,
            r#"{"body": {"kind": [{"anything-but": {"prefix": "ref"}}]}}"#,
            r#"{"body": {"total": [{"numeric": [">", 10, "<=", 42]}]}}"#,
            r#"{"body": {"total": [42.0]}}"#,
            r#"{"body": {"tags": ["b"]}}"#,
            r#"{"body": {"missing": [{"exists": false}]}}"#,
            r#"{"body": {"kind": [{"exists": true}]}}"#,
            r#"{"body": {"note": [null]}}"#,
        ];
        for p in yes {
            assert!(f(&[p]).matches(&r), "{p}");
        }
        let no = [
            r#"{"body": {"kind": ["refund"]}}"#,
            r#"{"body": {"id": [{"prefix": "REF-"}]}}"#,
            r#"{"body": {"kind": [{"anything-but": "order"}]}}"#,
            r#"{"body": {"total": [{"numeric": ["<", 10]}]}}"#,
            r#"{"body": {"total": ["42"]}}"#,
            r#"{"body": {"missing": ["x"]}}"#,
            r#"{"body": {"kind": [{"exists": false}]}}"#,
            r#"{"body": {"missing": {"deeper": ["x"]}}}"#,
        ];
        for p in no {
            assert!(!f(&[p]).matches(&r), "{p}");
        }
        // OR across filters; no filters pass everything.
        assert!(f(&[no[0], yes[0]]).matches(&r));
        assert!(f(&[]).matches(&r));
    }

    #[test]
    fn bad_patterns_are_typed_errors() {
        let many: Vec<String> = (0..6).map(|_| r#"{"a": [1]}"#.to_string()).collect();
        assert_eq!(Filters::parse(&many).unwrap_err(), FilterError::TooMany(6));
        for bad in [
            "not json",
            "[]",
            "{}",
            r#"{"a": 1}"#,
            r#"{"a": []}"#,
            r#"{"a": [{"prefix": 1}]}"#,
            r#"{"a": [{"numeric": ["~", 1]}]}"#,
            r#"{"a": [{"numeric": [">"]}]}"#,
            r#"{"a": [{"wildcard": "x*"}]}"#,
            r#"{"a": [{"prefix": "x", "suffix": "y"}]}"#,
            r#"{"a": [{"exists": "yes"}]}"#,
        ] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(matches!(
            Filters::parse(&[format!(r#"{{"a": ["{}"]}}"#, "x".repeat(5000))]),
            Err(FilterError::TooLong(_))
        ));
    }
}
