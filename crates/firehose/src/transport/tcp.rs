//! MQTT listeners: plain TCP (`[mqtt]`) and TLS (`[mqtts]`), with an optional PROXY protocol
//! header in front of either.
//!
//! The accept loop only accepts; each connection gets its own task, which reads the PROXY
//! header, asks the broker for admission, does the TLS handshake and then serves MQTT (a plain
//! TCP connection hands MQTT to a second task, made of only what the connection keeps). Every
//! step before MQTT is bounded by the connect timeout, so a silent client holds nothing but its
//! own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::info;

use crate::broker::{Broker, ConnectionInfo, Permit};
use crate::transport::metrics::Metrics;
use crate::transport::proxy;
use crate::transport::tls::{Service, TlsSettings};

/// How an MQTT listener treats its connections.
#[derive(Debug, Clone)]
pub struct MqttOptions {
    /// Expect a PROXY protocol header first.
    pub proxy_protocol: bool,
    /// Speak TLS (the MQTTS listener).
    pub tls: Option<Arc<TlsSettings>>,
    /// Connection metrics.
    pub metrics: Arc<Metrics>,
    /// Time allowed for the PROXY header and the TLS handshake.
    pub handshake_timeout: Duration,
}

/// A bound MQTT listener, not yet accepting.
#[derive(Debug)]
pub struct MqttListener {
    listener: TcpListener,
    broker: Broker,
    options: MqttOptions,
}

impl MqttListener {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error (address in use, permission denied for ports below 1024, ...).
    pub async fn bind(
        addr: SocketAddr,
        broker: Broker,
        options: MqttOptions,
    ) -> std::io::Result<MqttListener> {
        let listener = TcpListener::bind(addr).await?;
        Ok(MqttListener {
            listener,
            broker,
            options,
        })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// If the OS cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` becomes true, one task per connection.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while let Some((stream, peer)) = super::accept(&self.listener, &mut shutdown).await {
            let broker = self.broker.clone();
            let options = self.options.clone();
            tokio::spawn(handle(stream, peer, broker, options));
        }
    }
}

/// One connection, from accept to the end of MQTT.
async fn handle(
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    broker: Broker,
    options: MqttOptions,
) {
    let _ = stream.set_nodelay(true);
    let transport = if options.tls.is_some() { "tls" } else { "tcp" };
    let peer = if options.proxy_protocol {
        // Boxed, like the TLS path: this task lives as long as the connection.
        let header = Box::pin(timeout(
            options.handshake_timeout,
            proxy::read_header(&mut stream),
        ));
        match header.await {
            Ok(Ok(Some(client))) => client,
            Ok(Ok(None)) => socket_peer,
            Ok(Err(error)) => {
                info!(peer = %socket_peer, "closed connection: {error}");
                options.metrics.handshake_failed(transport, "proxy");
                return;
            }
            Err(_) => {
                info!(peer = %socket_peer, "closed connection: no PROXY header within {:?}", options.handshake_timeout);
                options.metrics.handshake_failed(transport, "proxy");
                return;
            }
        }
    } else {
        socket_peer
    };
    let permit = match broker.admit(peer) {
        Ok(permit) => permit,
        Err(refusal) => {
            info!(%peer, "refused connection: {refusal}");
            return;
        }
    };
    let guard = options.metrics.connection(transport);
    match &options.tls {
        None => {
            // MQTT gets a task of its own, made of only what the connection keeps: this task,
            // with the listener's options and the arguments it was started with, ends here
            // instead of being carried for the connection's whole life.
            let info = ConnectionInfo::new(peer, transport);
            tokio::spawn(broker.serve(stream, info, permit, guard));
        }
        // Boxed: a TLS stream and its handshake make a future several KiB larger.
        Some(tls) => {
            Box::pin(serve_tls(stream, peer, tls, &broker, &options, permit)).await;
            drop(guard);
        }
    }
}

/// The TLS handshake, then MQTT over it.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &TlsSettings,
    broker: &Broker,
    options: &MqttOptions,
    permit: Permit,
) {
    let transport = "tls";
    let acceptor = tls.acceptor(Service::Mqtt);
    let stream = match timeout(options.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            info!(%peer, "TLS handshake failed: {error}");
            options.metrics.handshake_failed(transport, "tls");
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake not finished within {:?}", options.handshake_timeout);
            options.metrics.handshake_failed(transport, "tls");
            return;
        }
    };
    let info = ConnectionInfo {
        peer,
        transport,
        authenticated_user: tls.client_user(stream.get_ref().1),
    };
    broker.serve(stream, info, permit, ()).await;
}
