//! The web page at `/` and `/events/<id>`: one HTML page, its script and its style sheet,
//! embedded in the binary (no CDN: it works offline and behind strict firewalls). The page only
//! uses the public HTTP API (`/api/v1/stream`, `/api/v1/events`), so it may depend on nothing
//! but axum.
//!
//! The page shows what publishers wrote, so it runs under a Content-Security-Policy
//! ([`PAGE_CSP`]) that allows only its own script and style sheet: no inline script or style,
//! no other origin, no framing. A payload that slipped past the page's escaping could then
//! still run nothing. The listener adds `nosniff`, `X-Frame-Options` and `Referrer-Policy`.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's Content-Security-Policy: its script, style sheet and API requests come from
/// this server only; forms submit here only; no `<base>`, no plugins, no framing.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                            img-src 'self'; connect-src 'self'; form-action 'self'; \
                            base-uri 'none'; frame-ancestors 'none'";

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
        .layer(axum::middleware::map_response(with_page_csp))
}

async fn with_page_csp(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(PAGE_CSP),
    );
    response
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
