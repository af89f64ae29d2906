//! One SSH session to Gerrit with russh: TCP connect, host key check, public key login, the
//! command, and its output as chunks of bytes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use super::GerritBridgeConfig;
use crate::bridge::BridgeError;

/// Time allowed for the TCP connect, the SSH handshake and the login.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server's host key is trusted.
#[derive(Debug, Clone)]
enum HostKeyCheck {
    /// A key of this known_hosts file for `[host]:port` (or `host` on port 22).
    KnownHosts(PathBuf),
    /// The key whose SHA-256 fingerprint is this (`SHA256:...`).
    Fingerprint(String),
}

/// Everything a session needs, read once at start.
#[derive(Debug)]
pub(crate) struct SessionConfig {
    host: String,
    port: u16,
    user: String,
    command: String,
    key: Arc<PrivateKey>,
    check: HostKeyCheck,
    ssh: Arc<client::Config>,
}

impl SessionConfig {
    /// Reads the private key and checks that the known_hosts file is readable.
    pub(crate) fn load(config: &GerritBridgeConfig) -> Result<SessionConfig, BridgeError> {
        let file_error = |what, path: &PathBuf, reason: String| BridgeError::File {
            bridge: config.name.clone(),
            what,
            path: path.display().to_string(),
            reason,
        };
        let key = russh::keys::load_secret_key(&config.private_key, None).map_err(|error| {
            file_error(
                "private_key",
                &config.private_key,
                format!(
                    "cannot load the key ({error}); expected an unencrypted OpenSSH private key"
                ),
            )
        })?;
        let check = match (&config.known_hosts, &config.host_key_fingerprint) {
            (Some(path), _) => {
                std::fs::read_to_string(path)
                    .map_err(|error| file_error("known_hosts", path, error.to_string()))?;
                HostKeyCheck::KnownHosts(path.clone())
            }
            (None, Some(fingerprint)) => HostKeyCheck::Fingerprint(fingerprint.clone()),
            (None, None) => {
                return Err(BridgeError::Invalid {
                    bridge: config.name.clone(),
                    message: "known_hosts or host_key_fingerprint is required".into(),
                })
            }
        };
        let ssh = client::Config {
            keepalive_interval: Some(Duration::from_secs(config.keepalive_secs)),
            keepalive_max: config.keepalive_max,
            inactivity_timeout: None,
            nodelay: true,
            ..client::Config::default()
        };
        Ok(SessionConfig {
            host: config.host.clone(),
            port: config.port,
            user: config.user.clone(),
            command: config.command.clone(),
            key: Arc::new(key),
            check,
            ssh: Arc::new(ssh),
        })
    }

    /// Connects, logs in and starts the command.
    ///
    /// # Errors
    /// A message for the status event and the log: what failed and why.
    pub(crate) async fn open(&self) -> Result<Stream, String> {
        let target = format!("{}:{}", self.host, self.port);
        let refusal = Arc::new(Mutex::new(None));
        let handler = Verifier {
            host: self.host.clone(),
            port: self.port,
            check: self.check.clone(),
            refusal: refusal.clone(),
        };
        let connect = async {
            let mut handle =
                client::connect(self.ssh.clone(), (self.host.as_str(), self.port), handler)
                    .await
                    .map_err(|error| {
                        match refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            Some(why) => why,
                            None => format!("{target}: SSH connection failed: {error}"),
                        }
                    })?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| format!("{target}: SSH negotiation failed: {e}"))?
                .flatten();
            let login = handle
                .authenticate_publickey(
                    self.user.clone(),
                    PrivateKeyWithHashAlg::new(self.key.clone(), hash),
                )
                .await
                .map_err(|e| format!("{target}: SSH login failed: {e}"))?;
            if !login.success() {
                return Err(format!(
                    "{target}: the server refused the public key of user {:?}",
                    self.user
                ));
            }
            let channel = handle
                .channel_open_session()
                .await
                .map_err(|e| format!("{target}: cannot open an SSH channel: {e}"))?;
            channel
                .exec(true, self.command.as_str())
                .await
                .map_err(|e| format!("{target}: cannot run {:?}: {e}", self.command))?;
            Ok::<_, String>((handle, channel))
        };
        let (handle, channel) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("{target}: no SSH session within {CONNECT_TIMEOUT:?}"))??;
        Ok(Stream {
            target,
            command: self.command.clone(),
            handle,
            channel,
            exit: None,
            stderr: Vec::new(),
            refused: false,
        })
    }
}

/// The running command's output.
pub(crate) struct Stream {
    target: String,
    command: String,
    handle: Handle<Verifier>,
    channel: russh::Channel<client::Msg>,
    exit: Option<u32>,
    stderr: Vec<u8>,
    refused: bool,
}

impl Stream {
    /// The next chunk of standard output; `None` at the end of the stream.
    ///
    /// # Errors
    /// When the server refuses the command.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let Some(message) = self.channel.wait().await else {
                return Ok(None);
            };
            match message {
                ChannelMsg::Data { data } => return Ok(Some(data.to_vec())),
                // Gerrit explains refusals on stderr ("fatal: ..."); keep the start of it.
                ChannelMsg::ExtendedData { data, .. } if self.stderr.len() < 4096 => {
                    self.stderr.extend_from_slice(&data);
                }
                ChannelMsg::ExitStatus { exit_status } => self.exit = Some(exit_status),
                ChannelMsg::Failure => {
                    self.refused = true;
                    return Err(format!(
                        "{}: the server refused to run {:?}",
                        self.target, self.command
                    ));
                }
                ChannelMsg::Eof | ChannelMsg::Close => {}
                _ => {}
            }
        }
    }

    /// Closes the session; returns why the stream ended, if it says more than "it ended".
    pub(crate) fn finish(self) -> Option<String> {
        let stderr = String::from_utf8_lossy(&self.stderr).trim().to_owned();
        let handle = self.handle;
        tokio::spawn(async move {
            let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
        });
        if self.refused {
            return None;
        }
        match (self.exit, stderr.is_empty()) {
            (Some(status), false) => Some(format!(
                "{}: {:?} exited with status {status}: {stderr}",
                self.target, self.command
            )),
            (Some(status), true) => Some(format!(
                "{}: {:?} exited with status {status}",
                self.target, self.command
            )),
            (None, false) => Some(format!(
                "{}: the connection was lost; the server said: {stderr}",
                self.target
            )),
            (None, true) => Some(format!("{}: the connection was lost", self.target)),
        }
    }
}

/// The russh handler: checks the host key.
pub(crate) struct Verifier {
    host: String,
    port: u16,
    check: HostKeyCheck,
    /// Why the key was refused, for the error message.
    refusal: Arc<Mutex<Option<String>>>,
}

impl Verifier {
    fn verify(&self, key: &PublicKey) -> Result<(), String> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let target = format!("{}:{}", self.host, self.port);
        match &self.check {
            HostKeyCheck::Fingerprint(pinned) => {
                if *pinned == fingerprint {
                    Ok(())
                } else {
                    Err(format!(
                        "{target}: host key {fingerprint} does not match the pinned \
                         host_key_fingerprint {pinned}: refused"
                    ))
                }
            }
            HostKeyCheck::KnownHosts(path) => {
                let known =
                    russh::keys::known_hosts::known_host_keys_path(&self.host, self.port, path)
                        .map_err(|e| format!("cannot read known_hosts {}: {e}", path.display()))?;
                if known
                    .iter()
                    .any(|(_, recorded)| recorded.key_data() == key.key_data())
                {
                    Ok(())
                } else if known.is_empty() {
                    Err(format!(
                        "{target}: host key {fingerprint} is unknown: known_hosts {} has no key \
                         for this host (add the output of `ssh-keyscan -p {} {}`): refused",
                        path.display(),
                        self.port,
                        self.host
                    ))
                } else {
                    Err(format!(
                        "{target}: host key {fingerprint} is not among the {} key(s) that \
                         known_hosts {} has for this host: refused (has the key changed?)",
                        known.len(),
                        path.display()
                    ))
                }
            }
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.verify(key),
            PublicKeyOrCertificate::Certificate(_) => Err(format!(
                "{}:{}: the server presented a host certificate; only plain host keys are \
                 checked: refused",
                self.host, self.port
            )),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}
