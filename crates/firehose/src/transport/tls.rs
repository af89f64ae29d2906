//! TLS for the MQTTS and HTTPS listeners: rustls server configurations built from PEM files,
//! reloaded on SIGHUP, and client certificates (mTLS) mapped to users.
//!
//! # Reload
//! Each listener reads the current configuration once per accepted connection, so a reload
//! applies to new connections only; connections already open keep the session they negotiated.
//! A reload that fails (unreadable file, key that does not match) keeps the previous
//! configuration.
//!
//! # Client certificates
//! With `tls.client_ca` set, clients may present a certificate signed by that CA (required with
//! `tls.client_cert_required`). The rule that maps a certificate to a user: the first Common
//! Name (CN) attribute of the certificate's subject, compared exactly (case-sensitive) with the
//! user names of the users file. A match logs the client in as that user without a password
//! (a CONNECT naming another user is refused). A valid certificate whose CN names no user
//! authenticates nobody: the client is treated as if it had presented none.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;

use crate::auth::Users;
use crate::config::TlsConfig;

/// Why the TLS configuration could not be built; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM.
    #[error("cannot read {what} {path}: {message}")]
    Read {
        /// Which setting (`tls.cert`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file holds no item of the expected kind.
    #[error("{what} {path} holds no {expected}")]
    Empty {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
    /// A setting is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// rustls refused the certificate, key or CA.
    #[error("{what}: {message}")]
    Rustls {
        /// What was being built.
        what: String,
        /// rustls' message.
        message: String,
    },
}

/// The crypto provider: *ring*, the only one compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs *ring* as the process-wide rustls provider (once; later calls do nothing).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Which listener a configuration is for (they differ in ALPN only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// MQTT over TLS: no ALPN.
    Mqtt,
    /// HTTPS: ALPN `http/1.1` (HTTP/2 is not served).
    Http,
}

/// The current TLS configurations and what they were built from.
#[derive(Debug)]
pub struct TlsSettings {
    files: TlsConfig,
    users: Users,
    mqtt: RwLock<Arc<ServerConfig>>,
    http: RwLock<Arc<ServerConfig>>,
}

impl TlsSettings {
    /// Reads the files named in `[tls]`. `users` serve to map client certificates to users.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or setting at fault.
    pub fn load(files: &TlsConfig, users: Users) -> Result<TlsSettings, TlsError> {
        let (mqtt, http) = build(files)?;
        Ok(TlsSettings {
            files: files.clone(),
            users,
            mqtt: RwLock::new(mqtt),
            http: RwLock::new(http),
        })
    }

    /// Reads the files again; new connections get the new configuration.
    ///
    /// # Errors
    /// [`TlsError`]; the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (mqtt, http) = build(&self.files)?;
        *self.mqtt.write().unwrap_or_else(|p| p.into_inner()) = mqtt;
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = http;
        Ok(())
    }

    /// An acceptor with the current configuration for `service`.
    pub fn acceptor(&self, service: Service) -> TlsAcceptor {
        let lock = match service {
            Service::Mqtt => &self.mqtt,
            Service::Http => &self.http,
        };
        TlsAcceptor::from(lock.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The user a verified client certificate maps to (see the module documentation).
    pub fn client_user(&self, connection: &ServerConnection) -> Option<String> {
        let cert = connection.peer_certificates()?.first()?;
        let Some(name) = subject_common_name(cert) else {
            tracing::info!("client certificate without a subject CN: no user");
            return None;
        };
        if self.users.identity_of(&name).is_some() {
            Some(name)
        } else {
            tracing::info!(cn = ?name, "client certificate CN names no user: treated as anonymous");
            None
        }
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "PEM certificate (BEGIN CERTIFICATE)",
        });
    }
    Ok(certs)
}

fn build(files: &TlsConfig) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), TlsError> {
    let cert_path = files.cert.as_deref().ok_or(TlsError::Missing("tls.cert"))?;
    let key_path = files.key.as_deref().ok_or(TlsError::Missing("tls.key"))?;
    let certs = read_certs("tls.cert", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "tls.key",
            path: key_path.to_owned(),
            expected: "PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        },
        e => TlsError::Read {
            what: "tls.key",
            path: key_path.to_owned(),
            message: e.to_string(),
        },
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            what: "TLS protocol versions".into(),
            message: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("tls.client_ca", ca_path)? {
                roots.add(cert).map_err(|e| TlsError::Rustls {
                    what: format!("tls.client_ca {}", ca_path.display()),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.client_cert_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::Rustls {
                what: format!("tls.client_ca {}", ca_path.display()),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mqtt = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls {
            what: format!(
                "certificate {} with key {}",
                cert_path.display(),
                key_path.display()
            ),
            message: e.to_string(),
        })?;
    let mut http = mqtt.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(mqtt), Arc::new(http)))
}

/// The first Common Name of a certificate's subject, from its DER encoding. The certificate
/// was verified by rustls before this runs; anything unexpected still yields `None`.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    let (certificate, _) = der_expect(cert, SEQUENCE)?;
    let (tbs, _) = der_expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if rest.first() == Some(&0xA0) {
        rest = der_next(rest)?.2;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        rest = der_next(rest)?.2;
    }
    let (mut names, _) = der_expect(rest, SEQUENCE)?;
    while !names.is_empty() {
        let (mut set, after) = der_expect(names, SET)?;
        names = after;
        while !set.is_empty() {
            let (attribute, after) = der_expect(set, SEQUENCE)?;
            set = after;
            let (oid, value) = der_expect(attribute, OID)?;
            if oid == COMMON_NAME {
                let (tag, text, _) = der_next(value)?;
                // UTF8String, PrintableString, IA5String
                return match tag {
                    0x0C | 0x13 | 0x16 => String::from_utf8(text.to_vec()).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// Splits one DER element off `input`: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = (rest.get(..count)?, rest.get(count..)?);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// Splits one DER element with tag `tag` off `input`: (contents, rest).
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_next(input)?;
    (found == tag).then_some((contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
    /// -subj "/O=Firehose tests/CN=gerrit-bridge"`.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBtzCCAV2gAwIBAgIUFva2Ng0ZRph9Uk4VF0241Xx9/ZkwCgYIKoZIzj0EAwIw
MTEXMBUGA1UECgwORmlyZWhvc2UgdGVzdHMxFjAUBgNVBAMMDWdlcnJpdC1icmlk
Z2UwHhcNMjYxMTI1MDkwMzUwWhcNMzYxMTIyMDkwMzUwWjAxMRcwFQYDVQQKDA5G
aXJlaG9zZSB0ZXN0czEWMBQGA1UEAwwNZ2Vycml0LWJyaWRnZTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABDJLgwH7DZMh9VlwRDq/ofYHIw+MGBK7el3QwDB75JFu
9VECzuALzymw0w3o5leJUn4Uo3kGkVMYg1qB0NPciFejUzBRMB0GA1UdDgQWBBQ4
55ZEntamGSjx9g3nCIn0rVK4ozAfBgNVHSMEGDAWgBQ455ZEntamGSjx9g3nCIn0
rVK4ozAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCYOTWFwLcx
394pqGa6vpojllWZlj5ebJlRvsFFk2CeZgIgBB+bpjp6/AGWLpSAx+PZqVT3VVcF
WwUGHvjtAZoI8+M=
-----END CERTIFICATE-----
";

    #[test]
    fn der_lengths() {
        assert_eq!(
            der_next(&[0x04, 0x01, 0xAA, 0xBB]),
            Some((0x04, &[0xAA][..], &[0xBB][..]))
        );
        assert_eq!(
            der_next(&[0x04, 0x81, 0x01, 0xAA]),
            Some((0x04, &[0xAA][..], &[][..]))
        );
        assert_eq!(der_next(&[0x04, 0x05, 0xAA]), None);
        assert_eq!(der_next(&[0x04, 0x80]), None);
        assert_eq!(der_next(&[]), None);
    }

    #[test]
    fn garbage_has_no_common_name() {
        assert_eq!(subject_common_name(b""), None);
        assert_eq!(subject_common_name(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }

    #[test]
    fn common_name_of_a_real_certificate() {
        let cert = CertificateDer::from_pem_slice(CERT.as_bytes()).expect("PEM");
        assert_eq!(subject_common_name(&cert).as_deref(), Some("gerrit-bridge"));
        // Every truncation fails cleanly.
        for len in 0..cert.len() {
            let _ = subject_common_name(&cert[..len]);
        }
    }
}
