//! MQTT over plain TCP: the accept loop.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::{Broker, ConnectionInfo};

/// A bound MQTT listener, not yet accepting.
#[derive(Debug)]
pub struct MqttListener {
    listener: TcpListener,
    broker: Broker,
}

impl MqttListener {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error (address in use, permission denied for ports below 1024, ...).
    pub async fn bind(addr: SocketAddr, broker: Broker) -> std::io::Result<MqttListener> {
        let listener = TcpListener::bind(addr).await?;
        Ok(MqttListener { listener, broker })
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
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    warn!("accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let permit = match self.broker.admit(peer) {
                Ok(permit) => permit,
                Err(refusal) => {
                    info!(%peer, "refused connection: {refusal}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let broker = self.broker.clone();
            let info = ConnectionInfo::new(peer, "tcp");
            tokio::spawn(async move { broker.serve(stream, info, permit).await });
        }
    }
}
