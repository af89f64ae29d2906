//! JSON Schemas of the topic families that bridges publish, and of those that the original
//! OpenStack Firehose's external publishers wrote (`gearman-subunit`, `gearman-logstash`, the
//! Ansible callback), served at `GET /api/v1/schemas` (the list) and
//! `GET /api/v1/schemas/<family>` (one schema). `docs/topics.md` explains the same families
//! with examples; the bridge tests check what is published against these schemas.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// One topic family: name, topic pattern and schema text.
struct Family {
    name: &'static str,
    topic: &'static str,
    schema: &'static str,
}

/// One [`Family`] whose schema is `schemas/<name>.json`.
macro_rules! family {
    ($name:literal, $topic:literal) => {
        Family {
            name: $name,
            topic: $topic,
            schema: include_str!(concat!("schemas/", $name, ".json")),
        }
    };
}

/// Every family, in the order of `docs/topics.md`.
const FAMILIES: [Family; 9] = [
    family!("gerrit", "gerrit/<project>/<event-type>"),
    family!("webhooks", "webhooks/<source>/<owner>/<repo>/<event>"),
    family!("logs", "logs/<host>/<app>"),
    family!("launchpad", "launchpad/<project>/bug/<bug-number>"),
    family!("mail", "mail/<bridge>/<sender-domain>"),
    family!("ansible", "ansible/playbook/<uuid>/..."),
    family!(
        "gearman-subunit",
        "gearman-subunit/<worker-host>/<project>/<change-number>"
    ),
    family!(
        "gearman-logstash",
        "gearman-logstash/<worker-host>/<project>/<change-number>/<action>"
    ),
    family!("bridge-status", "firehose/bridges/<name>/status"),
];

/// The routes, ready to merge into the HTTP server.
pub fn router() -> Router {
    Router::new()
        .route("/api/v1/schemas", get(list))
        .route("/api/v1/schemas/{family}", get(one))
}

async fn list() -> Response {
    let families: Vec<_> = FAMILIES
        .iter()
        .map(|f| {
            json!({
                "family": f.name,
                "topic": f.topic,
                "schema": format!("/api/v1/schemas/{}", f.name),
            })
        })
        .collect();
    Json(json!({ "families": families })).into_response()
}

async fn one(Path(family): Path<String>) -> Response {
    let name = family.strip_suffix(".json").unwrap_or(&family);
    match FAMILIES.iter().find(|f| f.name == name) {
        Some(f) => (
            [(header::CONTENT_TYPE, "application/schema+json")],
            f.schema,
        )
            .into_response(),
        None => {
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
            (
                StatusCode::NOT_FOUND,
                Json(json!({
                    "error": format!("no schema {family:?}; known: {}", known.join(", "))
                })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_json() {
        for family in &FAMILIES {
            let value: serde_json::Value =
                serde_json::from_str(family.schema).expect("schema parses");
            assert_eq!(
                value["$id"],
                format!("/api/v1/schemas/{}", family.name),
                "{}",
                family.name
            );
        }
    }
}
