//! The server side of the WebSocket opening handshake (RFC 6455 §4.2): the upgrade request
//! checked, the subprotocol chosen, the `101 Switching Protocols` answer. The HTTP listener
//! then takes the raw connection from hyper and frames it with [`super::WsStream`].
//!
//! Any other request on the WebSocket path gets an HTTP error whose body says what the
//! endpoint expects.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The WebSocket subprotocols accepted, in order of preference: `mqtt` (MQTT 3.1.1 and 5.0)
/// and `mqttv3.1`, which older clients send.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why a request is not a WebSocket upgrade this endpoint takes; each says what it expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The method must be GET.
    #[error("the request method must be GET, got {0}")]
    Method(Method),
    /// `Connection` must name `upgrade`.
    #[error("the Connection header must include \"upgrade\", got {0}")]
    Connection(String),
    /// `Upgrade` must name `websocket`.
    #[error("the Upgrade header must name \"websocket\", got {0}")]
    Upgrade(String),
    /// `Sec-WebSocket-Key` is needed for the answer.
    #[error("the Sec-WebSocket-Key header is missing")]
    MissingKey,
    /// A key whose accept value is not a header value (base64 always is: never seen).
    #[error("the Sec-WebSocket-Key header {0} gives no valid Sec-WebSocket-Accept")]
    Key(String),
    /// Only version 13 exists.
    #[error("the Sec-WebSocket-Version header must be 13, got {0}")]
    Version(String),
    /// hyper offers no upgrade for this request (HTTP/1.0, for one).
    #[error("this request cannot be upgraded: a WebSocket needs HTTP/1.1")]
    NotUpgradable,
}

impl Refusal {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body =
            format!("This is the MQTT over WebSocket endpoint (subprotocol \"mqtt\"): {self}\n");
        let mut response = (self.status(), body).into_response();
        if let Refusal::Method(_) = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        response
    }
}

/// An upgrade request that passed: what the `101` answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`, derived from the client's key.
    accept: HeaderValue,
    /// The subprotocol chosen, if the client offered one of [`SUBPROTOCOLS`].
    pub protocol: Option<&'static str>,
}

impl Accepted {
    /// The `101 Switching Protocols` answer; hyper hands over the connection once it is sent.
    pub fn response(self) -> Response {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = self.protocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

/// Checks an upgrade request (`upgradable`: hyper can hand over its connection) and chooses
/// the subprotocol: the first of [`SUBPROTOCOLS`] the client offered, compared exactly; a
/// client that offers none of them is served without one.
///
/// The key is not checked to be 16 bytes of base64 (RFC 6455 asks clients for that, not
/// servers): only echoed through its hash, as browsers and other servers do.
///
/// # Errors
/// The first [`Refusal`], in this order: method, `Connection`, `Upgrade`,
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version`, upgradability.
pub fn check(method: &Method, headers: &HeaderMap, upgradable: bool) -> Result<Accepted, Refusal> {
    if method != Method::GET {
        return Err(Refusal::Method(method.clone()));
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(Refusal::Connection(shown(headers, &header::CONNECTION)));
    }
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(Refusal::Upgrade(shown(headers, &header::UPGRADE)));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Refusal::MissingKey)?;
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|version| version.as_bytes() != b"13")
    {
        return Err(Refusal::Version(shown(
            headers,
            &header::SEC_WEBSOCKET_VERSION,
        )));
    }
    if !upgradable {
        return Err(Refusal::NotUpgradable);
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = HeaderValue::try_from(accept)
        .map_err(|_| Refusal::Key(shown(headers, &header::SEC_WEBSOCKET_KEY)))?;
    Ok(Accepted {
        accept,
        protocol: choose_protocol(headers),
    })
}

/// The first of [`SUBPROTOCOLS`] among the comma-separated `Sec-WebSocket-Protocol` values.
fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<&[u8]> = tokens(headers, &header::SEC_WEBSOCKET_PROTOCOL).collect();
    SUBPROTOCOLS
        .into_iter()
        .find(|protocol| offered.contains(&protocol.as_bytes()))
}

/// The comma-separated, trimmed items of every `name` header.
fn tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether a `name` header lists `token` (case-insensitive, as `Connection` and `Upgrade`
/// values are).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// The `name` headers as received, for a refusal's message.
fn shown(headers: &HeaderMap, name: &HeaderName) -> String {
    let values: Vec<String> = headers
        .get_all(name)
        .into_iter()
        .map(|value| format!("{:?}", String::from_utf8_lossy(value.as_bytes())))
        .collect();
    if values.is_empty() {
        "none".to_string()
    } else {
        values.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn upgrade(extra: &[(&str, &str)]) -> HeaderMap {
        let mut pairs = vec![
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        pairs.extend_from_slice(extra);
        request(&pairs)
    }

    #[test]
    fn the_rfc_example_key_and_the_preferred_subprotocol() {
        let accepted = check(
            &Method::GET,
            &upgrade(&[("sec-websocket-protocol", "mqttv3.1, mqtt")]),
            true,
        )
        .expect("accepted");
        // RFC 6455 §1.3.
        assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.protocol, Some("mqtt"));
        let response = accepted.response();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers();
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], "mqtt");
    }

    #[test]
    fn subprotocols_as_offered() {
        let chosen = |offers: &[&str]| {
            let extra: Vec<(&str, &str)> = offers
                .iter()
                .map(|offer| ("sec-websocket-protocol", *offer))
                .collect();
            check(&Method::GET, &upgrade(&extra), true)
                .expect("accepted")
                .protocol
        };
        assert_eq!(chosen(&["mqttv3.1"]), Some("mqttv3.1"));
        assert_eq!(chosen(&["graphql-ws", " mqttv3.1 "]), Some("mqttv3.1"));
        assert_eq!(chosen(&["MQTT"]), None, "compared exactly");
        assert_eq!(chosen(&[]), None);
        let response = check(&Method::GET, &upgrade(&[]), true)
            .expect("accepted")
            .response();
        assert!(!response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }

    #[test]
    fn refusals_in_order_with_their_status() {
        let refused = |method: Method, headers: HeaderMap, upgradable: bool| {
            check(&method, &headers, upgradable).expect_err("refused")
        };
        let post = refused(Method::POST, upgrade(&[]), true);
        assert_eq!(post, Refusal::Method(Method::POST));
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.into_response().headers()[header::ALLOW], "GET");

        let plain = refused(Method::GET, request(&[("host", "x")]), true);
        assert_eq!(plain, Refusal::Connection("none".into()));
        assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            plain.to_string(),
            "the Connection header must include \"upgrade\", got none"
        );

        let no_upgrade = request(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert_eq!(
            refused(Method::GET, no_upgrade, true),
            Refusal::Upgrade("\"h2c\"".into())
        );
        let no_key = request(&[("connection", "upgrade"), ("upgrade", "WebSocket")]);
        assert_eq!(refused(Method::GET, no_key, true), Refusal::MissingKey);
        let mut old = upgrade(&[]);
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            refused(Method::GET, old, true),
            Refusal::Version("\"8\"".into())
        );
        let http10 = refused(Method::GET, upgrade(&[]), false);
        assert_eq!(http10.status(), StatusCode::UPGRADE_REQUIRED);
    }

    #[tokio::test]
    async fn refusal_bodies_say_what_the_endpoint_expects() {
        let response = Refusal::MissingKey.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(
            body,
            "This is the MQTT over WebSocket endpoint (subprotocol \"mqtt\"): \
             the Sec-WebSocket-Key header is missing\n"
        );
    }
}
