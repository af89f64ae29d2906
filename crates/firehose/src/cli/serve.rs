//! `firehose serve`: load the configuration, bind the listeners, run until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::auth::Users;
use crate::broker::Broker;
use crate::config::{Config, Listen};
use crate::transport::tcp::MqttListener;

/// How long connections get to close after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Flags of `firehose serve`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Config file (TOML); see docs/firehose.example.toml.
    #[arg(long, env = "FIREHOSE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT listener address, or `off` [default: 0.0.0.0:1883].
    #[arg(long, env = "FIREHOSE_MQTT", value_name = "ADDR")]
    mqtt: Option<String>,
    /// HTTP listener address, or `off` [default: 0.0.0.0:8080].
    #[arg(long, env = "FIREHOSE_HTTP", value_name = "ADDR")]
    http: Option<String>,
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
        if let Some(http) = self.http {
            config.http.listen = http;
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
    if users.is_empty() {
        info!("no users file: every client is anonymous and read-only");
    }
    let broker = Broker::new(config.limits.clone(), users);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut listeners = Vec::new();
    if let Listen::On(addr) = config.mqtt_listen()? {
        let listener = MqttListener::bind(addr, broker.clone())
            .await
            .with_context(|| format!("cannot bind the MQTT listener on {addr}"))?;
        let bound = listener.local_addr().context("cannot read the bound MQTT address")?;
        info!(addr = %bound, "MQTT listener bound");
        listeners.push(tokio::spawn(listener.run(stopped.clone())));
    }
    if let Listen::On(addr) = config.http_listen()? {
        info!(%addr, "the HTTP listener is not part of this build yet; http.listen is ignored");
    }
    if listeners.is_empty() {
        anyhow::bail!("every listener is off: nothing to serve (set --mqtt)");
    }
    if let Some(interval) = config.sys_interval() {
        broker.spawn_sys(interval);
    }
    wait_for_signal().await?;
    info!("shutting down");
    stop.send_replace(true);
    for listener in listeners {
        let _ = listener.await;
    }
    broker.shutdown(SHUTDOWN_GRACE).await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM"),
        result = tokio::signal::ctrl_c() => {
            result.context("cannot listen for SIGINT")?;
            info!("received SIGINT");
        }
    }
    Ok(())
}
