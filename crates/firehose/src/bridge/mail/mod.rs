//! Mail: an IMAP mailbox watched with IDLE; each unseen message becomes an event.
//!
//! One task per `[[bridge.mail]]` table: connect (plain TCP, or implicit TLS with rustls),
//! log in, select the mailbox, then repeatedly process the unseen messages and wait in IDLE
//! (re-issued every `idle_secs`, before the server's 29-minute limit) until the server
//! announces a change. Each message is fetched by UID with `BODY.PEEK[]` (which leaves it
//! unseen), parsed ([`parse`]), published, and only once the event is durable marked `\Seen`
//! (or deleted and expunged, `on_processed = "delete"`): a crash in between leaves it unseen
//! and it is published again, never lost; once marked, it is never published again.
//!
//! Launchpad's notifications are published as lpmqtt published them ([`launchpad`]: to
//! `launchpad/<project>/bug/<bug-number>` and `launchpad`); any other mail only with
//! `publish_other_mail` (to `mail/<bridge>/<sender-domain>`), and with `sender_domains` only
//! from those domains ([`parse`] decides). What is not published is dropped on purpose:
//! counted as a refused input, logged without its text, and marked like published mail so
//! that it is counted once. A message that cannot be read as mail is counted as a refused
//! input and logged, and published best effort (to `mail/<bridge>/malformed` when other mail
//! is); it never stops the bridge. A lost connection is retried with capped exponential
//! backoff.
//!
//! Depends on the bridge framework ([`super`]) only. Its table,
//! `[[bridge.mail]]`, and the table's checks are in [`config`].

pub mod config;
mod launchpad;
mod parse;

pub use config::{MailBridgeConfig, OnProcessed};

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::{Client, Session};
use bytes::Bytes;
use firehose_codec::PublishProperties;
use futures_util::TryStreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::{BridgeContext, BridgeError, BuiltBridge, Throttle};

/// Longest wait for a connection, the greeting, the login or one command.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian, Fedora and Alpine keep the system CA bundle.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Reads the password and the CA file of one `[[bridge.mail]]` table and returns its task.
fn build(config: &MailBridgeConfig, cx: BridgeContext) -> Result<BuiltBridge, BridgeError> {
    let config = config.clone();
    let password = match (&config.password, &config.password_file) {
        (Some(password), _) => password.clone(),
        (None, Some(path)) => read_password(&config.name, path)?,
        (None, None) => {
            return Err(BridgeError::Invalid {
                bridge: config.name.clone(),
                message: "no password".into(),
            })
        }
    };
    let tls = if config.tls {
        Some(connector(&config.name, config.ca_file.as_deref())?)
    } else {
        None
    };
    let worker = Worker {
        cx,
        config,
        password,
        tls,
        throttle: Throttle::default(),
    };
    Ok(BuiltBridge {
        task: Some(Box::pin(worker.run())),
        routes: None,
    })
}

/// Reads a password file, without its trailing newline.
fn read_password(bridge: &str, path: &Path) -> Result<String, BridgeError> {
    let text = std::fs::read_to_string(path).map_err(|e| BridgeError::File {
        bridge: bridge.to_owned(),
        what: "password_file",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A rustls connector (ring) trusting `ca_file`, else the system CA bundle.
fn connector(bridge: &str, ca_file: Option<&Path>) -> Result<TlsConnector, BridgeError> {
    let invalid = |message: String| BridgeError::Invalid {
        bridge: bridge.to_owned(),
        message,
    };
    let path = match ca_file {
        Some(path) => path,
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| {
                invalid("tls = true but no system CA bundle was found; set ca_file".into())
            })?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| invalid(format!("CA file {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid(format!(
            "CA file {} holds no usable certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Plain TCP or TLS to the IMAP server.
#[derive(Debug)]
enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Implicit TLS (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a session ended.
type SessionError = String;

/// One bridge's task.
struct Worker {
    /// The bridge's context.
    cx: BridgeContext,
    /// Its table.
    config: MailBridgeConfig,
    /// The IMAP password.
    password: String,
    /// The TLS connector, with `tls = true`.
    tls: Option<TlsConnector>,
    /// Rations the warnings about dropped mail.
    throttle: Throttle,
}

/// Bounds one IMAP step by [`STEP_TIMEOUT`].
async fn step<T, E: std::fmt::Display>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {}s", STEP_TIMEOUT.as_secs())),
    }
}

impl Worker {
    /// Connects, processes, idles; reconnects with backoff; until shutdown.
    async fn run(self) {
        let initial = Duration::from_millis(self.config.backoff_initial_ms);
        let max = Duration::from_secs(self.config.backoff_max_secs);
        let mut delay = initial;
        loop {
            if self.cx.stopping() {
                return;
            }
            self.cx.set_state("connecting", false).await;
            let mut connected = false;
            match self.session(&mut connected).await {
                Ok(()) => return,
                Err(error) => {
                    // It may quote the server's answer: escaped.
                    warn!(bridge = %self.config.name, error = ?error, "IMAP session ended");
                    self.cx.error(format!("IMAP: {error}"));
                    self.cx.set_state("disconnected", false).await;
                }
            }
            if connected {
                delay = initial;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cx.shutdown() => return,
            }
            delay = (delay * 2).min(max);
        }
    }

    /// One connection: returns `Ok` at shutdown, the reason otherwise.
    async fn session(&self, connected: &mut bool) -> Result<(), SessionError> {
        let host = self.config.host.as_str();
        let port = self.config.port();
        let tcp = step("connect", TcpStream::connect((host, port))).await?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Tcp(tcp),
            Some(tls) => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("server name {host:?}: {e}"))?;
                Stream::Tls(Box::new(
                    step("TLS handshake", tls.connect(name, tcp)).await?,
                ))
            }
        };
        let mut client = Client::new(stream);
        step("greeting", async {
            client
                .read_response()
                .await?
                .ok_or_else(|| std::io::Error::other("closed before the greeting"))
        })
        .await?;
        let mut session = step("login", async {
            client
                .login(&self.config.user, &self.password)
                .await
                .map_err(|(e, _)| e)
        })
        .await?;
        step("select", session.select(&self.config.mailbox)).await?;
        info!(
            bridge = %self.config.name,
            "IMAP connected to {host}:{port}, mailbox {:?}", self.config.mailbox
        );
        self.cx.set_state("connected", true).await;
        *connected = true;

        let idle_for = Duration::from_secs(self.config.idle_secs);
        loop {
            self.process_unseen(&mut session).await?;
            if self.cx.stopping() {
                let _ = tokio::time::timeout(STEP_TIMEOUT, session.logout()).await;
                return Ok(());
            }
            let mut idle = session.idle();
            step("IDLE", idle.init()).await?;
            let outcome = {
                let (wait, _interrupt) = idle.wait_with_timeout(idle_for);
                tokio::select! {
                    result = wait => Some(result.map_err(|e| format!("IDLE: {e}"))?),
                    () = tokio::time::sleep(idle_for) => None,
                    () = self.cx.shutdown() => None,
                }
            };
            debug!(bridge = %self.config.name, ?outcome, "IDLE ended");
            session = step("DONE", idle.done()).await?;
        }
    }

    /// Publishes every unseen message, oldest first, marking each once durable.
    async fn process_unseen(&self, session: &mut Session<Stream>) -> Result<(), SessionError> {
        let mut uids: Vec<u32> = step("search", session.uid_search("UNSEEN"))
            .await?
            .into_iter()
            .collect();
        uids.sort_unstable();
        for uid in uids {
            if self.cx.stopping() {
                return Ok(());
            }
            let raw = step("fetch", async {
                let fetches: Vec<_> = session
                    .uid_fetch(uid.to_string(), "(UID BODY.PEEK[])")
                    .await?
                    .try_collect()
                    .await?;
                Ok::<_, async_imap::error::Error>(
                    fetches
                        .iter()
                        .find(|f| f.uid == Some(uid))
                        .map(|f| f.body().map(<[u8]>::to_vec)),
                )
            })
            .await?;
            let raw = match raw {
                Some(Some(raw)) => raw,
                // Expunged meanwhile by someone else: nothing was received.
                None => {
                    debug!(bridge = %self.config.name, uid, "message gone before its fetch");
                    continue;
                }
                // The server answered without the message: left unseen, tried again on the
                // next pass, and reported each time so that it is not skipped in silence.
                Some(None) => {
                    let error = format!("the server sent UID {uid} without its body");
                    warn!(bridge = %self.config.name, uid, "{error}; left unseen");
                    self.cx.error(error);
                    continue;
                }
            };
            let filter = parse::Filter {
                other_mail: self.config.publish_other_mail,
                sender_domains: &self.config.sender_domains,
            };
            let event = match parse::verdict(&self.config.name, &raw, filter) {
                parse::Verdict::Publish(event) => event,
                parse::Verdict::Drop(why) => {
                    self.drop_message(uid, &why);
                    self.mark(session, uid).await?;
                    continue;
                }
            };
            if let Some(why) = event.malformed {
                self.cx.rejected();
                warn!(bridge = %self.config.name, uid, "malformed message ({why}), published best effort");
            }
            let properties = PublishProperties {
                content_type: Some("application/json".into()),
                ..PublishProperties::default()
            };
            let payload = Bytes::from(event.payload.to_string());
            if let Err(error) = self
                .cx
                .publish_with(&event.topic, payload, properties)
                .await
            {
                // Left unseen: retried on the next pass (after a reconnection).
                return Err(format!("publish of UID {uid} to {}: {error}", event.topic));
            }
            self.mark(session, uid).await?;
            debug!(bridge = %self.config.name, uid, topic = ?event.topic, "mail published");
        }
        Ok(())
    }

    /// Counts and logs a message that is not published: rationed, since anyone can send
    /// mail, and without its text, which was not meant for the log either (the UID finds it
    /// in the mailbox).
    fn drop_message(&self, uid: u32, why: &str) {
        self.cx.rejected();
        match self.throttle.warning() {
            Some(quiet) => warn!(bridge = %self.config.name, uid, also_dropped = quiet,
                reason = ?why, "mail dropped, not published"),
            None => debug!(bridge = %self.config.name, uid, reason = ?why, "mail dropped"),
        }
    }

    /// Marks a message processed (`on_processed`): seen, or deleted and expunged.
    async fn mark(&self, session: &mut Session<Stream>, uid: u32) -> Result<(), SessionError> {
        let flags = match self.config.on_processed {
            OnProcessed::Seen => "+FLAGS.SILENT (\\Seen)",
            OnProcessed::Delete => "+FLAGS.SILENT (\\Seen \\Deleted)",
        };
        step("store flags", async {
            session
                .uid_store(uid.to_string(), flags)
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        if self.config.on_processed == OnProcessed::Delete {
            step("expunge", async {
                session
                    .uid_expunge(uid.to_string())
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?;
        }
        Ok(())
    }
}
