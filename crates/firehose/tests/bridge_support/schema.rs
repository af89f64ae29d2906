//! Checks published payloads against the JSON Schemas a running Firehose serves at
//! `/api/v1/schemas/<family>`, so that the schemas, `docs/topics.md` and what the bridges
//! publish cannot drift apart.
//!
//! The validator knows the subset of JSON Schema 2020-12 the schemas use: `type`, `enum`,
//! `const`, `required`, `properties`, `additionalProperties`, `items`, `minimum`, `pattern`,
//! `anyOf`, `oneOf` and local `$ref`s (`#/$defs/<name>`); `title`, `description`, `format`,
//! `examples`, `$comment`, `$schema`, `$id` and `$defs` are annotations. Any other keyword
//! fails the check, so a schema can never rely on a rule that would be skipped here.

use std::net::SocketAddr;

use serde_json::{Map, Value};

use crate::common::durable::http_json;

/// Keywords that constrain nothing.
const ANNOTATIONS: [&str; 8] = [
    "$schema",
    "$id",
    "$defs",
    "$comment",
    "title",
    "description",
    "format",
    "examples",
];

/// The schema of `family` as the server at `http` serves it.
pub(crate) fn served(http: SocketAddr, family: &str) -> Value {
    http_json(http, &format!("/api/v1/schemas/{family}"))
}

/// Panics, naming `what` and every violation, unless `value` is valid against `schema`.
pub(crate) fn assert_valid(schema: &Value, value: &Value, what: &str) {
    let mut errors = Vec::new();
    check(schema, schema, value, "", &mut errors);
    assert!(
        errors.is_empty(),
        "{what} does not match the schema {}:\n  {}\nvalue: {value}",
        schema["$id"],
        errors.join("\n  ")
    );
}

/// Whether `value` is valid against `schema` (for `anyOf`/`oneOf` and negative checks).
pub(crate) fn is_valid(root: &Value, schema: &Value, value: &Value) -> bool {
    let mut errors = Vec::new();
    check(root, schema, value, "", &mut errors);
    errors.is_empty()
}

fn check(root: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(rules) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errors.push(format!("{at}: nothing is allowed here"));
        }
        return;
    };
    for (keyword, rule) in rules {
        match keyword.as_str() {
            "type" => check_type(rule, value, at, errors),
            "enum" => {
                if !rule
                    .as_array()
                    .is_some_and(|options| options.contains(value))
                {
                    errors.push(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "const" => {
                if rule != value {
                    errors.push(format!("{at}: {value} is not {rule}"));
                }
            }
            "required" => {
                for name in rule.as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap_or_default();
                    if value.as_object().is_some_and(|o| !o.contains_key(name)) {
                        errors.push(format!("{at}: \"{name}\" is missing"));
                    }
                }
            }
            "properties" => {
                for (name, sub) in rule.as_object().into_iter().flatten() {
                    if let Some(v) = value.get(name) {
                        check(root, sub, v, &format!("{at}/{name}"), errors);
                    }
                }
            }
            "additionalProperties" => {
                let known = rules.get("properties").and_then(Value::as_object);
                for (name, v) in value.as_object().into_iter().flatten() {
                    if !known.is_some_and(|k: &Map<String, Value>| k.contains_key(name)) {
                        check(root, rule, v, &format!("{at}/{name}"), errors);
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    check(root, rule, item, &format!("{at}/{i}"), errors);
                }
            }
            "minimum" => {
                if let (Some(min), Some(n)) = (rule.as_f64(), value.as_f64()) {
                    if n < min {
                        errors.push(format!("{at}: {n} is below {min}"));
                    }
                }
            }
            "pattern" => {
                let re = regex_lite::Regex::new(rule.as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("pattern {rule} at {at}: {e}"));
                if value.as_str().is_some_and(|s| !re.is_match(s)) {
                    errors.push(format!("{at}: {value} does not match {rule}"));
                }
            }
            "anyOf" | "oneOf" => {
                let options = rule.as_array().map(Vec::as_slice).unwrap_or_default();
                let matched = options
                    .iter()
                    .filter(|option| is_valid(root, option, value))
                    .count();
                let ok = if keyword == "anyOf" {
                    matched >= 1
                } else {
                    matched == 1
                };
                if !ok {
                    errors.push(format!(
                        "{at}: {matched} of the {} {keyword} options match",
                        options.len()
                    ));
                }
            }
            "$ref" => {
                let target = rule
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                    .and_then(|name| root["$defs"].get(name))
                    .unwrap_or_else(|| panic!("$ref {rule} at {at}: not a local definition"));
                check(root, target, value, at, errors);
            }
            other if ANNOTATIONS.contains(&other) => {}
            other => panic!("schema keyword {other:?} at {at} is not known to this validator"),
        }
    }
}

fn check_type(rule: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let names: Vec<&str> = match rule {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => panic!("type {rule} at {at}"),
    };
    let fits = |name: &str| match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("type {other:?} at {at}"),
    };
    if !names.iter().any(|name| fits(name)) {
        errors.push(format!("{at}: {value} is not of type {rule}"));
    }
}

#[test]
fn the_validator_refuses_what_it_should() {
    let schema = serde_json::json!({
        "$defs": {"n": {"type": "integer", "minimum": 1}},
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {"enum": ["x", "y"]},
            "b": {"$ref": "#/$defs/n"},
            "c": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
            "d": {"oneOf": [{"type": "string"}, {"const": 5}]}
        },
        "additionalProperties": false
    });
    let ok = serde_json::json!({"a": "x", "b": 2, "c": ["ab"], "d": 5});
    assert!(is_valid(&schema, &schema, &ok));
    for bad in [
        serde_json::json!({"b": 2}),
        serde_json::json!({"a": "z"}),
        serde_json::json!({"a": "x", "b": 0}),
        serde_json::json!({"a": "x", "b": "2"}),
        serde_json::json!({"a": "x", "c": ["A"]}),
        serde_json::json!({"a": "x", "d": 6}),
        serde_json::json!({"a": "x", "e": 1}),
        serde_json::json!([]),
    ] {
        assert!(!is_valid(&schema, &schema, &bad), "{bad}");
    }
}
