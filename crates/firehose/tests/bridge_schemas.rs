//! The JSON Schemas a running Firehose serves at `/api/v1/schemas/<family>` against what they
//! describe, so that schemas, `docs/topics.md` and the original service's publishers cannot
//! drift apart:
//! - every JSON example of `docs/topics.md` matches the schema of the topic it is shown on;
//! - every message of `fixtures/compat/original-publishers.json` (the original OpenStack
//!   Firehose's Ansible callback and gearman workers, as their code published) matches its
//!   family's schema, on a topic of that family.
//!
//! What the bridges themselves publish is checked against the same schemas in
//! `bridge_mail.rs` and `bridge_gerrit.rs`.

mod bridge_support;
mod common;

use std::path::Path;

use serde_json::Value;

use bridge_support::{fixture, node_with, schema, user_toml};

/// Topic prefixes and the family whose schema describes them.
const FAMILIES: [(&str, &str); 9] = [
    ("gerrit/", "gerrit"),
    ("webhooks/", "webhooks"),
    ("logs/", "logs"),
    ("launchpad", "launchpad"),
    ("mail/", "mail"),
    ("ansible/", "ansible"),
    ("gearman-subunit/", "gearman-subunit"),
    ("gearman-logstash/", "gearman-logstash"),
    ("firehose/bridges/", "bridge-status"),
];

/// The family of a topic, if it is one of [`FAMILIES`].
fn family_of(topic: &str) -> Option<&'static str> {
    FAMILIES.iter().find_map(|(prefix, family)| {
        let fits = if prefix.ends_with('/') {
            topic.starts_with(prefix)
        } else {
            topic == *prefix || topic.starts_with(&format!("{prefix}/"))
        };
        fits.then_some(*family)
    })
}

/// Every ```json block of `text`, with the last topic of a known family quoted in code in the
/// paragraph before it: (topic, JSON, line number).
fn examples(text: &str) -> Vec<(String, Value, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```json" {
            i += 1;
            continue;
        }
        let start = i;
        let end = (start + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("docs/topics.md:{}: unclosed ```json", start + 1));
        let json = lines[start + 1..end].join("\n");
        let value: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("docs/topics.md:{}: not JSON ({e})", start + 1));
        let paragraph = (0..start)
            .rev()
            .find(|&j| lines[j].trim().is_empty() || lines[j].starts_with("```"))
            .map_or(0, |j| j + 1);
        let before = lines[paragraph..start].join("\n");
        let topic = before
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|span| family_of(span).is_some())
            .last()
            .unwrap_or_else(|| {
                panic!(
                    "docs/topics.md:{}: the example names no topic in the paragraph before it",
                    start + 1
                )
            });
        out.push((topic.to_owned(), value, start + 1));
        i = end + 1;
    }
    out
}

#[test]
fn every_example_of_topics_md_matches_its_schema() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/topics.md");
    let text = std::fs::read_to_string(&path).expect("read docs/topics.md");
    let examples = examples(&text);
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), "");
    let mut seen = Vec::new();
    for (topic, value, line) in &examples {
        let family = family_of(topic).unwrap_or_default();
        let schema = schema::served(node.http, family);
        schema::assert_valid(&schema, value, &format!("docs/topics.md:{line} ({topic})"));
        seen.push(family);
    }
    for (_, family) in FAMILIES {
        assert!(
            seen.contains(&family),
            "docs/topics.md shows no example of the {family} family"
        );
    }
}

#[test]
fn the_original_publishers_messages_match_their_schemas() {
    let text = fixture("compat/original-publishers.json");
    let fixture: Value = serde_json::from_slice(&text).expect("fixture is JSON");
    let messages = fixture["messages"].as_array().expect("messages");
    let (_dir, node) = node_with(&user_toml("pub", "pw", None, &["#"]), "");
    for message in messages {
        let topic = message["topic"].as_str().expect("topic");
        let family = message["family"].as_str().expect("family");
        assert_eq!(family_of(topic), Some(family), "{topic}");
        let schema = schema::served(node.http, family);
        schema::assert_valid(&schema, &message["payload"], topic);
    }
    // The Ansible schema tells the two plugins apart: each of the original callback's
    // messages is the original's shape, and not Firehose's plugin's.
    let ansible = schema::served(node.http, "ansible");
    let shape = |name: &str| serde_json::json!({ "$ref": format!("#/$defs/{name}") });
    for message in messages.iter().filter(|m| m["family"] == "ansible") {
        let payload = &message["payload"];
        assert!(
            schema::is_valid(&ansible, &shape("openstack-callback"), payload),
            "{payload}"
        );
        assert!(
            !schema::is_valid(&ansible, &shape("firehose-plugin"), payload),
            "{payload}"
        );
    }
}
