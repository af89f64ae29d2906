//! `firehose sub --filter`: conditions on the fields of an event's JSON payload, such as
//! `comment~^recheck`, `change.project=openstack/nova` or `patchSet`.
//!
//! A path is field names separated by dots, applied to the payload; a number picks an array
//! element (`approvals.0.type`). Forms:
//! - `PATH` — the field exists (and is not null);
//! - `!PATH` — it does not;
//! - `PATH=VALUE` / `PATH!=VALUE` — equal / not equal (strings as text, numbers and booleans by
//!   their JSON text: `patchSet.number=3`, `private=false`);
//! - `PATH~REGEX` / `PATH!~REGEX` — the field's text matches / does not match the regular
//!   expression (`regex-lite` syntax, unanchored: use `^` and `$`).
//!
//! Several `--filter`s must all hold.

use anyhow::Context;
use regex_lite::Regex;
use serde_json::Value;

/// What a condition checks on the value at its path.
#[derive(Debug)]
enum Test {
    Exists,
    Missing,
    Equals(String),
    NotEquals(String),
    Matches(Regex),
    NotMatches(Regex),
}

/// One parsed `--filter`.
#[derive(Debug)]
pub(crate) struct Condition {
    path: Vec<String>,
    test: Test,
}

impl Condition {
    /// Parses one `--filter` argument.
    ///
    /// # Errors
    /// An empty path or an invalid regular expression.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Condition> {
        let op_at = text.find(['=', '~']);
        let (path, test) = match op_at {
            None => match text.strip_prefix('!') {
                Some(path) => (path, Test::Missing),
                None => (text, Test::Exists),
            },
            Some(at) => {
                let negated = at > 0 && text.as_bytes()[at - 1] == b'!';
                let path = &text[..if negated { at - 1 } else { at }];
                let value = &text[at + 1..];
                let test = if text.as_bytes()[at] == b'=' {
                    if negated {
                        Test::NotEquals(value.to_owned())
                    } else {
                        Test::Equals(value.to_owned())
                    }
                } else {
                    let regex = Regex::new(value).with_context(|| {
                        format!("--filter {text:?}: invalid regular expression {value:?}")
                    })?;
                    if negated {
                        Test::NotMatches(regex)
                    } else {
                        Test::Matches(regex)
                    }
                };
                (path, test)
            }
        };
        if path.is_empty() {
            anyhow::bail!(
                "--filter {text:?}: expected PATH, !PATH, PATH=VALUE, PATH!=VALUE, PATH~REGEX or PATH!~REGEX"
            );
        }
        Ok(Condition {
            path: path.split('.').map(str::to_owned).collect(),
            test,
        })
    }

    /// Whether `payload` satisfies the condition.
    pub(crate) fn matches(&self, payload: &Value) -> bool {
        let mut at = payload;
        let mut found = true;
        for key in &self.path {
            let next = match at {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => {
                    found = false;
                    break;
                }
            }
        }
        let value = if found && !at.is_null() {
            Some(at)
        } else {
            None
        };
        let text = value.map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match &self.test {
            Test::Exists => value.is_some(),
            Test::Missing => value.is_none(),
            Test::Equals(want) => text.as_deref() == Some(want.as_str()),
            Test::NotEquals(want) => text.as_deref() != Some(want.as_str()),
            Test::Matches(re) => text.is_some_and(|t| re.is_match(&t)),
            Test::NotMatches(re) => !text.is_some_and(|t| re.is_match(&t)),
        }
    }
}

/// Whether every condition holds.
pub(crate) fn all_match(conditions: &[Condition], payload: &Value) -> bool {
    conditions.iter().all(|c| c.matches(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(filter: &str, payload: &Value) -> bool {
        Condition::parse(filter).expect("parse").matches(payload)
    }

    #[test]
    fn equality_regex_existence_and_negations() {
        let p = json!({
            "type": "comment-added",
            "comment": "Patch Set 3:\n\nrecheck",
            "change": {"project": "openstack/nova", "private": false},
            "patchSet": {"number": 3},
            "approvals": [{"type": "Verified", "value": "-1"}]
        });
        assert!(check("change.project=openstack/nova", &p));
        assert!(!check("change.project=openstack/neutron", &p));
        assert!(check("change.project!=openstack/neutron", &p));
        assert!(check("patchSet.number=3", &p));
        assert!(check("change.private=false", &p));
        assert!(check("comment~(?m)^recheck$", &p));
        assert!(!check("comment~^recheck", &p));
        assert!(check("comment!~^recheck", &p));
        assert!(check("patchSet", &p));
        assert!(!check("nothere", &p));
        assert!(check("!nothere", &p));
        assert!(check("approvals.0.type=Verified", &p));
        assert!(!check("approvals.1.type", &p));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let e = Condition::parse("comment~(").expect_err("bad regex");
        assert!(format!("{e:#}").contains("invalid regular expression"));
        assert!(Condition::parse("=x").is_err());
        assert!(Condition::parse("").is_err());
    }
}
