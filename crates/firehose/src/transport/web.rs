//! The web page at `/` and `/events/<id>`: one HTML page, its script and its style sheet,
//! embedded in the binary (no CDN: it works offline and behind strict firewalls). The page only
//! uses the public HTTP API (`/api/v1/stream`, `/api/v1/events`), so it may depend on nothing
//! but axum.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// The page's routes, ready to merge into the HTTP server.
pub fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/events/{id}", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
}

async fn page() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}
