//! Transports: listeners that accept connections and hand each stream to the broker.
//!
//! Depends on [`crate::broker`], [`crate::auth`], [`crate::config`], [`crate::store`],
//! [`crate::event`] and [`crate::health`]; only `cli` uses it.
//!
//! # Layout
//! - [`tcp`]: the MQTT listeners (TCP, and TLS for MQTTS), PROXY protocol in front.
//! - [`http`]: the HTTP(S) listener: MQTT over WebSocket, `/healthz`, `/metrics`, `/`.
//! - [`limits`]: what HTTP clients may make the server keep (connections, history reads,
//!   streams, per address and in total), and how refusals are counted and logged.
//! - [`http_body`]: the deadline on request bodies; response bodies that hold a limit's place.
//! - [`cross_site`]: the check that keeps other sites' pages from publishing through a
//!   visitor's browser.
//! - [`ws`]: a WebSocket seen as the byte stream the broker serves.
//! - [`tls`]: rustls configurations from PEM files, SIGHUP reload, client certificates.
//! - [`proxy`]: the client address behind proxies (PROXY protocol, `X-Forwarded-For`).
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`publish_api`]: `POST /api/v1/publish/<topic>` for authenticated publishers.
//! - [`history`]: the history API and its SSE stream.
//! - [`web`]: the web page at `/` and `/events/<id>` (live tail, history, permalinks), its
//!   assets embedded in the binary.
//!
//! The HTTP listener also serves the routes of the bridges that listen on it (webhooks, the
//! topic schemas) and shows the bridges' health in `/healthz` and `/metrics`. Both come from
//! `cli` as data ([`http::HttpOptions`]: an axum router, and [`crate::health::BridgeStates`]),
//! so no transport names a bridge.

pub mod cross_site;
pub mod history;
pub mod http;
pub mod http_body;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod publish_api;
pub mod tcp;
pub mod tls;
pub mod web;
pub mod ws;

/// The next accepted connection, or `None` once `shutdown` turns true. Accept errors (usually
/// EMFILE: out of file descriptors) are logged and retried after a short pause instead of
/// spinning or stopping the listener.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return None,
        };
        match accepted {
            Ok(pair) => return Some(pair),
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
