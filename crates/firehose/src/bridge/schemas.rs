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

/// Every family, in the order of `docs/topics.md`.
const FAMILIES: [Family; 9] = [
    Family {
        name: "gerrit",
        topic: "gerrit/<project>/<event-type>",
        schema: include_str!("schemas/gerrit.json"),
    },
    Family {
        name: "webhooks",
        topic: "webhooks/<source>/<owner>/<repo>/<event>",
        schema: include_str!("schemas/webhooks.json"),
    },
    Family {
        name: "logs",
        topic: "logs/<host>/<app>",
        schema: include_str!("schemas/logs.json"),
    },
    Family {
        name: "launchpad",
        topic: "launchpad/<project>/bug/<bug-number>",
        schema: include_str!("schemas/launchpad.json"),
    },
    Family {
        name: "mail",
        topic: "mail/<bridge>/<sender-domain>",
        schema: include_str!("schemas/mail.json"),
    },
    Family {
        name: "ansible",
        topic: "ansible/playbook/<uuid>/...",
        schema: include_str!("schemas/ansible.json"),
    },
    Family {
        name: "gearman-subunit",
        topic: "gearman-subunit/<worker-host>/<project>/<change-number>",
        schema: include_str!("schemas/gearman-subunit.json"),
    },
    Family {
        name: "gearman-logstash",
        topic: "gearman-logstash/<worker-host>/<project>/<change-number>/<action>",
        schema: include_str!("schemas/gearman-logstash.json"),
    },
    Family {
        name: "bridge-status",
        topic: "firehose/bridges/<name>/status",
        schema: include_str!("schemas/bridge-status.json"),
    },
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
