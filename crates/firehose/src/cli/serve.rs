//! `firehose serve`: load the configuration, bind the listeners, run until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info};

use crate::auth::Users;
use crate::bridge::BridgesConfig;
use crate::broker::Broker;
use crate::config::Listen;
use crate::store::{Store, StoreConfig};
use crate::transport::http::{HttpListener, HttpOptions};
use crate::transport::limits::HttpLimits;
use crate::transport::metrics::Metrics;
use crate::transport::tcp::{MqttListener, MqttOptions};
use crate::transport::tls::{self, TlsSettings};

/// How long connections get to close after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The whole config file: the leaf `config` leaves the `[bridge]` section's type open, and the
/// bridges' own settings fill it here, where layers meet.
type Config = crate::config::Config<BridgesConfig>;

/// Flags of `firehose serve`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Config file (TOML); see docs/firehose.example.toml.
    #[arg(long, env = "FIREHOSE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT listener address, or `off` [default: 0.0.0.0:1883].
    #[arg(
        long,
        env = "FIREHOSE_MQTT",
        value_name = "ADDR",
        overrides_with = "mqtt"
    )]
    mqtt: Option<String>,
    /// MQTT over TLS listener address, or `off` [default: off; usually 0.0.0.0:8883]. Needs
    /// --tls-cert and --tls-key.
    #[arg(
        long,
        env = "FIREHOSE_MQTTS",
        value_name = "ADDR",
        overrides_with = "mqtts"
    )]
    mqtts: Option<String>,
    /// HTTP listener address (MQTT over WebSocket at /mqtt, /metrics, /healthz), or `off`
    /// [default: 0.0.0.0:8080].
    #[arg(
        long,
        env = "FIREHOSE_HTTP",
        value_name = "ADDR",
        overrides_with = "http"
    )]
    http: Option<String>,
    /// HTTPS listener address, or `off` [default: off; usually 0.0.0.0:443]. Needs --tls-cert
    /// and --tls-key.
    #[arg(
        long,
        env = "FIREHOSE_HTTPS",
        value_name = "ADDR",
        overrides_with = "https"
    )]
    https: Option<String>,
    /// TLS certificate chain (PEM), for the MQTTS and HTTPS listeners; reloaded on SIGHUP.
    #[arg(long, env = "FIREHOSE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), for the MQTTS and HTTPS listeners; reloaded on SIGHUP.
    #[arg(long, env = "FIREHOSE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Data directory [default: ./firehose-data].
    #[arg(long, env = "FIREHOSE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Users file (publishers, argon2id hashes, ACLs); without one everyone is anonymous and
    /// read-only.
    #[arg(long, env = "FIREHOSE_USERS", value_name = "FILE")]
    users: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(mqtt) = self.mqtt {
            config.mqtt.listen = mqtt;
        }
        if let Some(mqtts) = self.mqtts {
            config.mqtts.listen = mqtts;
        }
        if let Some(http) = self.http {
            config.http.listen = http;
        }
        if let Some(https) = self.https {
            config.https.listen = https;
        }
        if let Some(cert) = self.tls_cert {
            config.tls.cert = Some(cert);
        }
        if let Some(key) = self.tls_key {
            config.tls.key = Some(key);
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(users) = self.users {
            config.users = Some(users);
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs the broker until a termination signal.
///
/// # Errors
/// Bad configuration, an unreadable users file, or a listener that cannot bind.
pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let users = match &config.users {
        Some(path) => Users::load(path)?,
        None => Users::none(),
    };
    tls::install_provider();
    if config.data_dir.exists() && !config.data_dir.is_dir() {
        anyhow::bail!(
            "data directory {} exists but is not a directory (set --data-dir or data_dir)",
            config.data_dir.display()
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("firehose")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, users))
}

async fn serve(config: Config, users: Users) -> anyhow::Result<()> {
    let mut termination = Termination::register()?;
    if users.is_empty() {
        info!("no users file: every client is anonymous and read-only");
    }
    let mqtts = config.mqtts_listen()?;
    let https = config.https_listen()?;
    // Certificates are read before anything binds, so a bad file stops the start.
    let tls = if mqtts != Listen::Off || https != Listen::Off {
        Some(Arc::new(
            TlsSettings::load(&config.tls, users.clone())
                .context("cannot load the TLS certificate")?,
        ))
    } else {
        None
    };
    // Handle SIGHUP before any listener is announced: its default action would end the process.
    let reloader = tokio::spawn(reload_on_sighup(tls.clone())?);
    let store_config = StoreConfig {
        data_dir: config.data_dir.clone(),
        durability: config.log.durability,
        retention: config.log.retention_rules()?,
    };
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("the store could not be opened")??;
    info!(data_dir = %config.data_dir.display(), last_event = store.last_id(), "event log opened");
    let broker = Broker::open(config.limits.clone(), users.clone(), store)?;
    // Bridges read their keys and secrets now, so a bad file stops the start before any bind.
    let bridges = crate::bridge::build(&config.bridge, &broker)?;
    let metrics = Arc::new(Metrics::new(broker.clone()).with_bridges(bridges.states()));
    let handshake_timeout = Duration::from_secs(config.limits.connect_timeout_secs);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut listeners = Vec::new();

    let mqtt_listeners = [
        (
            "MQTT",
            config.mqtt_listen()?,
            config.mqtt.proxy_protocol,
            None,
        ),
        ("MQTTS", mqtts, config.mqtts.proxy_protocol, tls.clone()),
    ];
    for (name, listen, proxy_protocol, tls) in mqtt_listeners {
        let Listen::On(addr) = listen else { continue };
        let options = MqttOptions {
            proxy_protocol,
            tls,
            metrics: metrics.clone(),
            handshake_timeout,
        };
        let listener = MqttListener::bind(addr, broker.clone(), options)
            .await
            .with_context(|| format!("cannot bind the {name} listener on {addr}"))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("cannot read the bound {name} address"))?;
        info!(addr = %bound, "{name} listener bound");
        listeners.push(tokio::spawn(listener.run(stopped.clone())));
    }

    // One set of counts for HTTP and HTTPS: the limits are the server's, not a listener's.
    let http_limits = HttpLimits::new(&config.http, config.trusted_proxies()?, metrics.clone());
    let allowed_origins = config.allowed_origins()?;
    let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
    // A WebSocket frame may hold a whole packet plus the start of the next one.
    let max_ws_message = (config.limits.max_packet_size as usize)
        .saturating_mul(2)
        .max(64 * 1024);
    let http_listeners = [
        ("HTTP", config.http_listen()?, None),
        ("HTTPS", https, tls.clone()),
    ];
    for (name, listen, tls) in http_listeners {
        let Listen::On(addr) = listen else { continue };
        let options = HttpOptions {
            ws_path: config.http.ws_path.clone(),
            tls,
            metrics: metrics.clone(),
            limits: http_limits.clone(),
            handshake_timeout,
            body_timeout: Duration::from_secs(config.http.body_timeout_secs),
            max_ws_message,
            max_publish_body: config.limits.max_packet_size as usize,
            allowed_origins: allowed_origins.clone(),
            max_history_filters: size(config.http.max_history_filters),
            history_scan_budget: size(config.http.history_scan_budget),
            max_page_bytes: size(config.http.max_page_bytes),
            bridges: bridges.states(),
            routes: bridges.routes(),
        };
        let listener = HttpListener::bind(addr, broker.clone(), options)
            .await
            .with_context(|| format!("cannot bind the {name} listener on {addr}"))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("cannot read the bound {name} address"))?;
        info!(addr = %bound, "{name} listener bound");
        listeners.push(tokio::spawn(listener.run(stopped.clone())));
    }

    if listeners.is_empty() {
        anyhow::bail!("every listener is off: nothing to serve (set --mqtt or --http)");
    }
    if let Some(interval) = config.sys_interval() {
        broker.spawn_sys(interval);
    }
    let bridges = bridges.spawn();
    termination.wait().await;
    info!("shutting down");
    reloader.abort();
    stop.send_replace(true);
    for listener in listeners {
        let _ = listener.await;
    }
    bridges.shutdown().await;
    broker.shutdown(SHUTDOWN_GRACE).await;
    info!("stopped");
    Ok(())
}

/// Reloads the TLS certificate and key on every SIGHUP (new connections get the new ones).
/// The handler is registered when this returns, before the future runs.
fn reload_on_sighup(
    tls: Option<Arc<TlsSettings>>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(async move {
        while hup.recv().await.is_some() {
            match &tls {
                None => info!("received SIGHUP: no TLS listener, nothing to reload"),
                Some(tls) => match tls.reload() {
                    Ok(()) => info!("received SIGHUP: TLS certificate reloaded"),
                    Err(e) => error!(
                        "received SIGHUP: TLS reload failed, keeping the previous certificate: {e}"
                    ),
                },
            }
        }
    })
}

/// SIGTERM and SIGINT, registered before anything binds: a signal that arrives while the
/// listeners start is then a clean shutdown, not the default (immediate death).
struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    fn register() -> anyhow::Result<Termination> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Termination {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("received SIGTERM"),
            _ = self.int.recv() => info!("received SIGINT"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ConfigError;

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/firehose.example.toml");
        let config = Config::load(&path).expect("example config loads");
        assert_eq!(
            config.mqtt_listen().expect("mqtt"),
            Listen::On("0.0.0.0:1883".parse().expect("addr"))
        );
    }

    #[test]
    fn production_config_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/firehose.production.toml");
        let config = Config::load(&path).expect("production config loads");
        let port = |listen: Result<Listen, ConfigError>| match listen.expect("listen") {
            Listen::On(addr) => addr.port(),
            Listen::Off => 0,
        };
        assert_eq!(port(config.mqtt_listen()), 1883);
        assert_eq!(port(config.mqtts_listen()), 8883);
        assert_eq!(port(config.http_listen()), 80);
        assert_eq!(port(config.https_listen()), 443);
        assert!(config.tls.cert.is_some() && config.tls.key.is_some());
    }
}
