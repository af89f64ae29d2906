//! Where the client commands (`sub`, `pub`) connect: server URLs (`mqtt://`, `mqtts://`,
//! `ws://`, `wss://`, `http://`, `https://`), TCP or TLS byte streams, and the rustls client
//! configuration (roots from `--ca-file`, else the system bundle).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a TCP connect plus TLS handshake may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Debian, Ubuntu, Alpine and Arch keep the system CA bundle.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The protocol part of a server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over secure WebSocket.
    Wss,
    /// Server-Sent Events and the history API over HTTP.
    Http,
    /// The same over HTTPS.
    Https,
}

impl Scheme {
    /// Whether the byte stream is TLS.
    pub(crate) fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss | Scheme::Https)
    }

    /// Whether this server speaks MQTT (as opposed to the HTTP API).
    pub(crate) fn mqtt(self) -> bool {
        !matches!(self, Scheme::Http | Scheme::Https)
    }
}

/// A parsed `--server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerUrl {
    /// The protocol.
    pub(crate) scheme: Scheme,
    /// Host name or address (IPv6 without brackets).
    pub(crate) host: String,
    /// Port (the scheme's default when the URL has none).
    pub(crate) port: u16,
    /// Path: `/mqtt` by default for WebSocket, the base path of the API for HTTP.
    pub(crate) path: String,
    /// The URL as given, for messages.
    pub(crate) text: String,
}

impl ServerUrl {
    /// Parses `scheme://host[:port][/path]`.
    ///
    /// # Errors
    /// An unknown scheme, a missing host or a bad port, said plainly.
    pub(crate) fn parse(text: &str) -> anyhow::Result<ServerUrl> {
        let (scheme, rest) = text.split_once("://").with_context(|| {
            format!("server {text:?}: expected scheme://host[:port], e.g. mqtt://localhost:1883")
        })?;
        let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (Scheme::Mqtt, 1883),
            "mqtts" | "ssl" => (Scheme::Mqtts, 8883),
            "ws" => (Scheme::Ws, 80),
            "wss" => (Scheme::Wss, 443),
            "http" => (Scheme::Http, 80),
            "https" => (Scheme::Https, 443),
            other => bail!(
                "server {text:?}: unknown scheme {other:?}; expected mqtt, mqtts, ws, wss, http or https"
            ),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, String::new()),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .with_context(|| format!("server {text:?}: unclosed [ in the address"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            bail!("server {text:?}: no host");
        }
        let port = match port {
            Some(p) => p
                .parse()
                .with_context(|| format!("server {text:?}: port must be 1-65535, got {p:?}"))?,
            None => default_port,
        };
        let path = match scheme {
            Scheme::Ws | Scheme::Wss if path.is_empty() || path == "/" => "/mqtt".to_owned(),
            _ => path.trim_end_matches('/').to_owned(),
        };
        Ok(ServerUrl {
            scheme,
            host: host.to_owned(),
            port,
            path,
            text: text.to_owned(),
        })
    }

    /// `http(s)://host:port` plus the base path, for API requests.
    pub(crate) fn http_base(&self) -> String {
        let scheme = if self.scheme.tls() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    /// `host:port`, IPv6 in brackets.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses the `--server` URLs of a command and its TLS settings, checking the CA file at once
/// when any server uses TLS: a bad `--ca-file` is a mistake to report now (and once), not a
/// server to retry forever.
///
/// # Errors
/// A URL that does not parse, or an unusable CA file.
pub(crate) fn servers_and_tls(
    urls: &[String],
    ca_file: Option<&Path>,
) -> anyhow::Result<(Vec<ServerUrl>, TlsOptions)> {
    let servers = urls
        .iter()
        .map(|s| ServerUrl::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = TlsOptions {
        ca_file: ca_file.map(Path::to_path_buf),
    };
    if servers.iter().any(|s| s.scheme.tls()) {
        tls.connector()?;
    }
    Ok((servers, tls))
}

/// TLS client settings shared by every connection of a command.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    /// PEM file of trusted CA certificates (else the system bundle).
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

impl TlsOptions {
    /// A rustls connector trusting `ca_file` or the system bundle.
    ///
    /// # Errors
    /// An unreadable or empty CA file, or no system bundle.
    pub(crate) fn connector(&self) -> anyhow::Result<TlsConnector> {
        let path = match &self.ca_file {
            Some(path) => path.clone(),
            None => SYSTEM_CA_BUNDLES
                .iter()
                .map(Path::new)
                .find(|p| p.exists())
                .map(Path::to_path_buf)
                .context("no system CA bundle found; pass --ca-file FILE (PEM)")?,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .with_context(|| format!("cannot read CA file {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("CA file {} is not valid PEM", path.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            bail!("CA file {} holds no usable certificate", path.display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// A TCP or TLS byte stream to a server.
pub(crate) enum ByteStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ByteStream::Tcp(_) => "ByteStream::Tcp",
            ByteStream::Tls(_) => "ByteStream::Tls",
        })
    }
}

/// Opens a TCP connection to `url`, with TLS when its scheme says so.
///
/// # Errors
/// Connection refused, timeout, certificate not trusted.
pub(crate) async fn connect(url: &ServerUrl, tls: &TlsOptions) -> anyhow::Result<ByteStream> {
    let step = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .with_context(|| format!("cannot connect to {}", url.text))?;
        let _ = tcp.set_nodelay(true);
        if !url.scheme.tls() {
            return Ok(ByteStream::Tcp(tcp));
        }
        let name = ServerName::try_from(url.host.clone())
            .with_context(|| format!("{}: {:?} is not a valid TLS name", url.text, url.host))?;
        let stream = tls
            .connector()?
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {} failed", url.text))?;
        Ok(ByteStream::Tls(Box::new(stream)))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, step)
        .await
        .with_context(|| format!("{}: no connection within {CONNECT_TIMEOUT:?}", url.text))?
}

impl AsyncRead for ByteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ByteStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ByteStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ByteStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ByteStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ByteStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ByteStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ByteStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ByteStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_default_ports_and_paths() {
        let u = ServerUrl::parse("ws://example.org").expect("parse");
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (Scheme::Ws, 80, "/mqtt")
        );
        let u = ServerUrl::parse("mqtts://[::1]:9000").expect("parse");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        let u = ServerUrl::parse("http://h:8080/").expect("parse");
        assert_eq!(u.http_base(), "http://h:8080");
        assert!(ServerUrl::parse("gopher://x").is_err());
        assert!(ServerUrl::parse("localhost:1883").is_err());
        assert!(ServerUrl::parse("mqtt://h:99999").is_err());
    }
}
