//! The HTTP listener (and HTTPS, the same service over TLS): MQTT over WebSocket at `/mqtt`,
//! `/healthz`, `/metrics`, the page at `/`, the history and publish APIs, and the routes of the
//! bridges that listen here (webhooks, topic schemas).
//!
//! The accept loop is ours rather than `axum::serve`, so that each connection can get its TLS
//! handshake, its peer address and a bound on how long its request headers may take (slow
//! clients that never finish a request are closed) before the axum router sees a request.
//! HTTP/1.1 only: WebSocket upgrades need it, and browsers, proxies and MQTT clients speak it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Request, State};
use axum::http::{header, StatusCode};
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
use crate::config::IpBlock;
use crate::health::BridgeStates;
use crate::transport::metrics::{self, Metrics};
use crate::transport::proxy;
use crate::transport::tls::{Service, TlsSettings};
use crate::transport::ws::{handshake, WsStream};

/// How long open HTTP connections get to finish their request at shutdown.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// How the HTTP listener serves.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Path of the MQTT over WebSocket endpoint.
    pub ws_path: String,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpBlock>,
    /// Speak TLS (the HTTPS listener).
    pub tls: Option<Arc<TlsSettings>>,
    /// The registry behind `/metrics`, and connection metrics.
    pub metrics: Arc<Metrics>,
    /// Time allowed for the TLS handshake and for each request's headers.
    pub handshake_timeout: Duration,
    /// Largest WebSocket data frame accepted, in bytes. Messages have no limit of their own:
    /// their frames are read as one byte stream, never buffered whole.
    pub max_ws_message: usize,
    /// Largest payload of `POST /api/v1/publish/<topic>` (`limits.max_packet_size`).
    pub max_publish_body: usize,
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
    trusted_proxies: Vec<IpBlock>,
    max_ws_message: usize,
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
}

/// A bound HTTP(S) listener, not yet accepting.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<TlsSettings>>,
    metrics: Arc<Metrics>,
    handshake_timeout: Duration,
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
        let history = super::history::router(broker.clone());
        let publish = super::publish_api::router(broker.clone(), options.max_publish_body);
        let app = Arc::new(App {
            broker,
            metrics: options.metrics.clone(),
            trusted_proxies: options.trusted_proxies,
            max_ws_message: options.max_ws_message,
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
            router,
            tls: options.tls,
            metrics: options.metrics,
            handshake_timeout: options.handshake_timeout,
        })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// If the OS cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` becomes true, one task per connection. WebSocket
    /// connections then belong to the broker, which closes them at its own shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while let Some((stream, peer)) = super::accept(&self.listener, &mut shutdown).await {
            tokio::spawn(connection(
                stream,
                peer,
                self.router.clone(),
                self.tls.clone(),
                self.metrics.clone(),
                self.handshake_timeout,
                shutdown.clone(),
            ));
        }
    }
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    router: Router,
    tls: Option<Arc<TlsSettings>>,
    metrics: Arc<Metrics>,
    handshake_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        let peer = Peer {
            addr,
            secure: false,
            tls_user: None,
        };
        serve_http(stream, peer, router, metrics, handshake_timeout, shutdown).await;
        return;
    };
    let acceptor = tls.acceptor(Service::Http);
    let stream = match timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            debug!(peer = %addr, "TLS handshake failed: {error}");
            metrics.handshake_failed("wss", "tls");
            return;
        }
        Err(_) => {
            debug!(peer = %addr, "TLS handshake not finished within {handshake_timeout:?}");
            metrics.handshake_failed("wss", "tls");
            return;
        }
    };
    let peer = Peer {
        addr,
        secure: true,
        tls_user: tls.client_user(stream.get_ref().1),
    };
    serve_http(stream, peer, router, metrics, handshake_timeout, shutdown).await;
}

async fn serve_http<S>(
    stream: S,
    peer: Peer,
    router: Router,
    metrics: Arc<Metrics>,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        metrics.http_request();
        request.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
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
async fn mqtt_over_websocket(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
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
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    let client = proxy::forwarded_client(peer.addr, &app.trusted_proxies, forwarded);
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
        authenticated_user: peer.tls_user,
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
                // A task of its own, made of only what the connection keeps (as for TCP).
                tokio::spawn(broker.serve(stream, info, permit, guard));
            }
            Err(error) => debug!(peer = %client, "WebSocket upgrade failed: {error}"),
        }
    });
    accepted.response()
}
