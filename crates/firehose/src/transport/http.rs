//! The HTTP listener (and HTTPS, the same service over TLS): MQTT over WebSocket at `/mqtt`,
//! `/healthz`, `/metrics`, the page at `/`, the history and publish APIs, and the routes of the
//! bridges that listen here (webhooks, topic schemas).
//!
//! Depends on [`crate::broker`], [`crate::config`], [`crate::health`] and the other transport
//! modules: [`super::limits`], [`super::http_body`], [`super::proxy`], [`super::tls`],
//! [`super::ws`], and the routes of [`super::history`], [`super::publish_api`], [`super::web`].
//!
//! The accept loop is ours rather than `axum::serve`, so that each connection is bounded
//! before the axum router sees a request:
//! - at accept, `http.max_connections` in total and `http.max_connections_per_ip` per client
//!   address ([`super::limits`]): a connection beyond them is closed at once, as the MQTT
//!   listener does, which costs less than any answer (an HTTPS answer needs a TLS handshake
//!   first). Behind a trusted proxy the client address is known per request, and a request
//!   beyond its address's share gets 503 with `Retry-After` instead: closing the proxy's
//!   connection would fail the other clients it carries;
//! - the TLS handshake and each request's headers get `limits.connect_timeout_secs` (slow
//!   clients that never finish a request are closed, idle keep-alive connections too), and at
//!   most [`REQUEST_HEAD_MAX`] bytes;
//! - each request body gets `http.body_timeout_secs` in total ([`super::http_body`]).
//!
//! WebSocket connections and SSE streams hold their place under the limits for as long as
//! they live. Every response carries the security headers of [`security_headers`].
//! HTTP/1.1 only: WebSocket upgrades need it, and browsers, proxies and MQTT clients speak it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tower_service::Service as _;
use tracing::{debug, info};

use crate::broker::{Broker, ConnectionInfo};
use crate::health::BridgeStates;
use crate::transport::history::HistoryOptions;
use crate::transport::http_body::{DeadlineBody, Holding};
use crate::transport::limits::{HttpLimits, Reason, Slot};
use crate::transport::metrics::{self, Metrics};
use crate::transport::proxy;
use crate::transport::publish_api::PublishOptions;
use crate::transport::tls::{Service, TlsSettings};
use crate::transport::ws::{handshake, WsStream};

/// How long open HTTP connections get to finish their request at shutdown.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// Most bytes of a request's head (request line and headers) hyper buffers; a longer head
/// gets 431. Bounds what a connection that has not finished its request keeps (hyper's
/// default is about 400 KiB), and still fits a history query with a thousand short filters.
pub const REQUEST_HEAD_MAX: usize = 64 * 1024;

/// The Content-Security-Policy of every response that sets none of its own: nothing may be
/// loaded or framed. API answers are data; this keeps one that a browser is tricked into
/// showing as a page inert. The web page sets its own ([`super::web`]).
const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// How the HTTP listener serves.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Path of the MQTT over WebSocket endpoint.
    pub ws_path: String,
    /// Speak TLS (the HTTPS listener).
    pub tls: Option<Arc<TlsSettings>>,
    /// The registry behind `/metrics`, and connection metrics.
    pub metrics: Arc<Metrics>,
    /// Connection limits, shared by the HTTP and HTTPS listeners; they also know the
    /// proxies whose `X-Forwarded-For` is believed.
    pub limits: Arc<HttpLimits>,
    /// Time allowed for the TLS handshake and for each request's headers.
    pub handshake_timeout: Duration,
    /// Time allowed for each request's body (`http.body_timeout_secs`).
    pub body_timeout: Duration,
    /// Largest WebSocket data frame accepted, in bytes. Messages have no limit of their own:
    /// their frames are read as one byte stream, never buffered whole.
    pub max_ws_message: usize,
    /// Largest payload of `POST /api/v1/publish/<topic>` (`limits.max_packet_size`).
    pub max_publish_body: usize,
    /// Origins besides this server's that may publish from a browser (`http.allowed_origins`).
    pub allowed_origins: Vec<String>,
    /// Most `topic=` filters per history query (`http.max_history_filters`).
    pub max_history_filters: usize,
    /// Events examined times filters per history page (`http.history_scan_budget`).
    pub history_scan_budget: usize,
    /// Bytes of topics and payloads per history page (`http.max_page_bytes`).
    pub max_page_bytes: usize,
    /// The bridges' states, for `/healthz`.
    pub bridges: BridgeStates,
    /// Further routes, merged in as given: `cli` passes those of the bridges that listen on
    /// HTTP (webhooks, topic schemas), so that this listener never names a bridge.
    pub routes: Router,
}

/// What every handler may use.
#[derive(Debug)]
struct App {
    broker: Broker,
    metrics: Arc<Metrics>,
    max_ws_message: usize,
    allowed_origins: Vec<String>,
    bridges: BridgeStates,
}

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
struct Peer {
    /// The TCP peer (a proxy, maybe).
    addr: SocketAddr,
    /// Whether the connection is TLS.
    secure: bool,
    /// The user a client certificate maps to.
    tls_user: Option<String>,
    /// The connection's place under the connection limits; a WebSocket keeps it.
    slot: Arc<Slot>,
}

/// The client a request is from: the TCP peer, or behind a trusted proxy the address its
/// `X-Forwarded-For` names. Every request carries it as an extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// The places under the limits a request holds: its connection's and, behind a trusted
/// proxy, its client's. A WebSocket takes them along for its whole life.
#[derive(Debug, Clone)]
struct Held {
    /// The connection's place.
    _connection: Arc<Slot>,
    /// The client's place behind a trusted proxy.
    _request: Option<Arc<Slot>>,
}

/// What every connection of a listener shares.
#[derive(Debug)]
struct Shared {
    router: Router,
    metrics: Arc<Metrics>,
    limits: Arc<HttpLimits>,
    handshake_timeout: Duration,
    body_timeout: Duration,
}

/// A bound HTTP(S) listener, not yet accepting.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    tls: Option<Arc<TlsSettings>>,
    shared: Arc<Shared>,
}

impl HttpListener {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(
        addr: SocketAddr,
        broker: Broker,
        options: HttpOptions,
    ) -> std::io::Result<HttpListener> {
        let listener = TcpListener::bind(addr).await?;
        let history = super::history::router(
            broker.clone(),
            HistoryOptions {
                max_filters: options.max_history_filters,
                scan_budget: options.history_scan_budget,
                max_page_bytes: options.max_page_bytes,
                limits: options.limits.clone(),
            },
        );
        let publish = super::publish_api::router(
            broker.clone(),
            PublishOptions {
                max_body: options.max_publish_body,
                allowed_origins: options.allowed_origins.clone(),
                limits: options.limits.clone(),
            },
        );
        let app = Arc::new(App {
            broker,
            metrics: options.metrics.clone(),
            max_ws_message: options.max_ws_message,
            allowed_origins: options.allowed_origins,
            bridges: options.bridges,
        });
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(prometheus))
            .route(&options.ws_path, any(mqtt_over_websocket))
            .with_state(app)
            .merge(history)
            .merge(super::web::router())
            .merge(publish)
            .merge(options.routes);
        Ok(HttpListener {
            listener,
            tls: options.tls,
            shared: Arc::new(Shared {
                router,
                metrics: options.metrics,
                limits: options.limits,
                handshake_timeout: options.handshake_timeout,
                body_timeout: options.body_timeout,
            }),
        })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// If the OS cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` becomes true, one task per connection; a
    /// connection beyond the connection limits is closed at once (counted and logged by
    /// [`HttpLimits`]). WebSocket connections then belong to the broker, which closes them at
    /// its own shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while let Some((stream, peer)) = super::accept(&self.listener, &mut shutdown).await {
            let Ok(slot) = self.shared.limits.connection(peer.ip()) else {
                drop(stream);
                continue;
            };
            tokio::spawn(connection(
                stream,
                peer,
                slot,
                self.shared.clone(),
                self.tls.clone(),
                shutdown.clone(),
            ));
        }
    }
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    slot: Slot,
    shared: Arc<Shared>,
    tls: Option<Arc<TlsSettings>>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let slot = Arc::new(slot);
    let Some(tls) = tls else {
        let peer = Peer {
            addr,
            secure: false,
            tls_user: None,
            slot,
        };
        serve_http(stream, peer, shared, shutdown).await;
        return;
    };
    let acceptor = tls.acceptor(Service::Http);
    let handshake_timeout = shared.handshake_timeout;
    let stream = match timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            debug!(peer = %addr, "TLS handshake failed: {error}");
            shared.metrics.handshake_failed("wss", "tls");
            return;
        }
        Err(_) => {
            debug!(peer = %addr, "TLS handshake not finished within {handshake_timeout:?}");
            shared.metrics.handshake_failed("wss", "tls");
            return;
        }
    };
    let peer = Peer {
        addr,
        secure: true,
        tls_user: tls.client_user(stream.get_ref().1),
        slot,
    };
    serve_http(stream, peer, shared, shutdown).await;
}

async fn serve_http<S>(
    stream: S,
    peer: Peer,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let header_timeout = shared.handshake_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let shared = shared.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(shared.serve(request, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(REQUEST_HEAD_MAX)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            match timeout(HTTP_GRACE, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        // Slow or broken clients end here; they concern nobody else.
        debug!(peer = %addr, "HTTP connection ended: {error}");
    }
}

impl Shared {
    /// One request: its client address and places under the limits, a deadline on its body,
    /// the router, then the security headers.
    async fn serve(&self, request: hyper::Request<Incoming>, peer: Peer) -> Response {
        self.metrics.http_request();
        let client = proxy::forwarded_client(
            peer.addr,
            self.limits.trusted_proxies(),
            forwarded_for(request.headers()),
        );
        let proxied = if self.limits.trusts(peer.addr.ip()) {
            match self.limits.proxied_request(client.ip()) {
                Ok(slot) => Some(Arc::new(slot)),
                Err(reason) => return security_headers(unavailable(reason)),
            }
        } else {
            None
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ClientAddr(client));
        parts.extensions.insert(Held {
            _connection: peer.slot.clone(),
            _request: proxied.clone(),
        });
        parts.extensions.insert(peer);
        let body = Body::new(DeadlineBody::new(
            body,
            self.body_timeout,
            self.limits.clone(),
            client.ip(),
        ));
        let mut router = self.router.clone();
        let response = match router.call(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let response = match proxied {
            // An SSE stream holds its client's place for as long as it streams.
            Some(slot) => response.map(|body| Body::new(Holding::new(body, slot))),
            None => response,
        };
        security_headers(response)
    }
}

/// Every `X-Forwarded-For` value that is text.
fn forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
}

/// 503 with `Retry-After`, for a proxied request beyond its address's share.
fn unavailable(reason: Reason) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        "this address has the most connections http.max_connections_per_ip allows; try again later\n",
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(reason.retry_after_secs()),
    );
    response
}

/// The headers every response carries: `X-Content-Type-Options: nosniff` (a payload is never
/// guessed into a script or a page), `X-Frame-Options: DENY` (nothing here may be framed, for
/// browsers that predate CSP's `frame-ancestors`), `Referrer-Policy: no-referrer` (the page's
/// URLs carry search terms, which other sites need not see), and [`DEFAULT_CSP`] unless the
/// route set its own Content-Security-Policy.
fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(DEFAULT_CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `ok`, then one line per bridge; `?format=json` gives the bridges' status events as JSON.
/// Always 200 while the broker serves: a bridge whose source is down is reported, and does not
/// make a load balancer drop this node.
async fn healthz(
    State(app): State<Arc<App>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if query.as_deref() == Some("format=json") {
        let bridges: Vec<serde_json::Value> =
            app.bridges.iter().map(|state| state.to_json()).collect();
        return axum::Json(serde_json::json!({ "status": "ok", "bridges": bridges }))
            .into_response();
    }
    let mut text = String::from("ok\n");
    for state in app.bridges.iter() {
        text.push_str(&state.summary());
        text.push('\n');
    }
    text.into_response()
}

async fn prometheus(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}

/// MQTT over WebSocket: the handshake is checked here and answered with `101`, then hyper
/// hands over the raw connection, framed by [`WsStream`] (not axum's `WebSocket`: see
/// [`crate::transport::ws`] for why).
///
/// A client certificate logs the client in as its user, and a browser presents it to any
/// page's WebSocket (WebSockets are not bound by CORS): a cross-site upgrade
/// ([`super::cross_site`]) is served, but anonymously, so that another site's page cannot
/// publish as the certificate's user.
async fn mqtt_over_websocket(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    Extension(held): Extension<Held>,
    mut request: Request,
) -> Response {
    let transport = if peer.secure { "wss" } else { "ws" };
    let upgradable = request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some();
    let accepted = match handshake::check(request.method(), request.headers(), upgradable) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            app.metrics.handshake_failed(transport, "upgrade");
            debug!(peer = %peer.addr, "not a WebSocket upgrade: {refusal}");
            return refusal.into_response();
        }
    };
    let authenticated_user = match (
        peer.tls_user,
        super::cross_site::check(request.headers(), &app.allowed_origins),
    ) {
        (Some(user), Err(refusal)) => {
            info!(
                peer = %client,
                user = ?user,
                origin = ?refusal.origin,
                "cross-site WebSocket: served anonymously, not as its client certificate's user"
            );
            None
        }
        (user, _) => user,
    };
    let permit = match app.broker.admit(client) {
        Ok(permit) => permit,
        Err(refusal) => {
            info!(peer = %client, "refused WebSocket connection: {refusal}");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{refusal}\n")).into_response();
        }
    };
    let broker = app.broker.clone();
    let metrics = app.metrics.clone();
    let max_frame = app.max_ws_message;
    let info = ConnectionInfo {
        peer: client,
        transport,
        authenticated_user,
    };
    // The connection is handed over once the 101 below has been written.
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let guard = metrics.connection(transport);
                // `TokioIo<Upgraded>` passes vectored writes straight to the TCP or TLS
                // stream (hyper buffers nothing once upgraded), so a frame is one `writev`.
                let stream = WsStream::new(TokioIo::new(upgraded), max_frame);
                // A task of its own, made of only what the connection keeps (as for TCP); it
                // keeps the connection's places under the HTTP limits too.
                tokio::spawn(broker.serve(stream, info, permit, (guard, held)));
            }
            Err(error) => debug!(peer = %client, "WebSocket upgrade failed: {error}"),
        }
    });
    accepted.response()
}
