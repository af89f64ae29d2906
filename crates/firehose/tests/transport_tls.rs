//! TLS: MQTT over TLS (MQTTS), HTTPS and MQTT over secure WebSocket (WSS), with a CA and
//! certificates made by `openssl` in the test; certificate reload on SIGHUP; client
//! certificates that log a client in as a user (mTLS); configuration errors.

mod common;
mod transport_support;

use std::path::Path;

use tokio::io::AsyncWriteExt;

use common::wire::ConnectOpts;
use common::{
    have_mosquitto_clients, MosquittoSub, RawClient, Server, ServerOptions, Startup, User,
};
use transport_support::{
    client_config, expect_eof, http_request, start, tls_connect, tls_toml, wait_for_log, CertFiles,
    Listeners, MqttConn, Pki, Read,
};

const ALL_TLS: Listeners = Listeners {
    http: false,
    https: true,
    mqtts: true,
};

/// A CA and a server certificate in `dir`.
fn pki(dir: &Path) -> (Pki, CertFiles) {
    let pki = Pki::new(&dir.join("pki"), "test-ca");
    let server = pki.server("server", "first");
    (pki, server)
}

fn tls_server(dir: &tempfile::TempDir, extra: &str) -> (Pki, CertFiles, ServerOptions) {
    let (pki, files) = pki(dir.path());
    let options = ServerOptions::standard()
        .with_config(&tls_toml(&files, None, false))
        .with_config(extra);
    (pki, files, options)
}

/// The CN of the certificate the server presented on `stream`.
fn server_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate");
    firehose::transport::tls::subject_common_name(&certs[0]).expect("subject CN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_and_wss_carry_mqtt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, _, options) = tls_server(&dir, "");
    let (server, addrs) = start(options, ALL_TLS);
    let config = client_config(&pki.ca, None);

    // MQTT over TLS subscriber, TCP publisher.
    let tls = tls_connect(addrs.mqtts(), config.clone())
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut sub = MqttConn::stream(Box::new(tls));
    sub.anonymous(true).await;
    sub.subscribe("secure/#", 1).await;

    // MQTT over secure WebSocket subscriber; a browser-like client offers h2 too and gets
    // HTTP/1.1, which WebSocket upgrades need.
    let mut alpn = (*config).clone();
    alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tls_connect(addrs.https(), std::sync::Arc::new(alpn))
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut wss = MqttConn::ws_with(Box::new(tls), "/mqtt", "mqtt", &[])
        .await
        .expect("WSS upgrade");
    wss.anonymous(false).await;
    wss.subscribe("secure/#", 0).await;

    let mut publisher = RawClient::publisher(addrs.mqtt, false);
    publisher.publish0("secure/a", b"over tls");
    assert_eq!(sub.expect_publish().await.payload, b"over tls");
    assert_eq!(wss.expect_publish().await.payload, b"over tls");
    wait_for_log(&server, "transport=\"wss\"");
    wait_for_log(&server, "transport=\"tls\"");

    // HTTPS serves the same routes.
    let tls = tls_connect(addrs.https(), config).await.expect("TLS");
    let (status, body) = http_request(
        Box::new(tls),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_plain_clients_fail_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, _, options) = tls_server(&dir, "[limits]\nconnect_timeout_secs = 1");
    let (_server, addrs) = start(options, ALL_TLS);
    // A client that trusts another CA refuses the server.
    let other = Pki::new(&dir.path().join("other"), "other-ca");
    let err = tls_connect(addrs.mqtts(), client_config(&other.ca, None)).await;
    assert!(
        err.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    // Plain MQTT on the TLS port: the handshake fails and the connection closes.
    let mut plain = transport_support::tcp(addrs.mqtts()).await;
    plain
        .write_all(&ConnectOpts::new(false, "plain").encode())
        .await
        .expect("send CONNECT");
    expect_eof(&mut plain).await;
    // A client that says nothing is closed after the connect timeout.
    let mut silent = transport_support::tcp(addrs.mqtts()).await;
    expect_eof(&mut silent).await;
    // Others are still served.
    let tls = tls_connect(addrs.mqtts(), client_config(&pki.ca, None))
        .await
        .expect("TLS");
    let mut ok = MqttConn::stream(Box::new(tls));
    ok.anonymous(false).await;
    ok.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, files, options) = tls_server(&dir, "");
    let (server, addrs) = start(options, ALL_TLS);
    let config = client_config(&pki.ca, None);

    let tls = tls_connect(addrs.mqtts(), config.clone())
        .await
        .expect("TLS");
    assert_eq!(server_cn(&tls), "first");
    let mut old = MqttConn::stream(Box::new(tls));
    old.anonymous(true).await;
    old.subscribe("reload/#", 1).await;
    let wss_tls = tls_connect(addrs.https(), config.clone())
        .await
        .expect("TLS");
    assert_eq!(server_cn(&wss_tls), "first");
    let mut old_wss = MqttConn::ws_with(Box::new(wss_tls), "/mqtt", "mqtt", &[])
        .await
        .expect("WSS");
    old_wss.anonymous(false).await;
    old_wss.subscribe("reload/#", 0).await;

    // A broken replacement is refused and the old certificate stays.
    std::fs::write(&files.cert, "not a certificate").expect("break cert");
    server.hangup();
    wait_for_log(&server, "TLS reload failed");
    let tls = tls_connect(addrs.mqtts(), config.clone())
        .await
        .expect("TLS");
    assert_eq!(server_cn(&tls), "first");

    // A new certificate from the same CA: new connections get it.
    let second = pki.server("second", "second");
    std::fs::copy(&second.cert, &files.cert).expect("replace cert");
    std::fs::copy(&second.key, &files.key).expect("replace key");
    server.hangup();
    wait_for_log(&server, "TLS certificate reloaded");
    for addr in [addrs.mqtts(), addrs.https()] {
        let tls = tls_connect(addr, config.clone()).await.expect("TLS");
        assert_eq!(server_cn(&tls), "second", "{addr}");
    }

    // The connections made before the reload still work.
    let mut publisher = RawClient::publisher(addrs.mqtt, true);
    publisher.publish0("reload/x", b"still here");
    assert_eq!(old.expect_publish().await.payload, b"still here");
    assert_eq!(old_wss.expect_publish().await.payload, b"still here");
    old.ping().await;
}

fn mtls_users() -> ServerOptions {
    let mut options = ServerOptions::standard();
    options
        .users
        .push(User::new("cert-user", "unused-password", &["mtls/#"]));
    options
}

/// A server with the standard users and `cert-user`, whose TLS listeners accept client
/// certificates of `pki`; and `cert-user`'s certificate.
fn mtls_server(dir: &Path) -> (Pki, CertFiles, Server, transport_support::Addrs) {
    let (pki, files) = pki(dir);
    let options = mtls_users().with_config(&tls_toml(&files, Some(&pki.ca), false));
    let (server, addrs) = start(options, ALL_TLS);
    let user_cert = pki.client("user", "cert-user");
    (pki, user_cert, server, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_maps_to_a_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, user_cert, server, addrs) = mtls_server(dir.path());
    let stranger_cert = pki.client("stranger", "stranger");

    let mut sub = RawClient::anonymous(addrs.mqtt, true, "mtls-sub");
    sub.subscribe("mtls/#", 0);

    // CN = cert-user: logged in without a password, may publish in its ACL.
    let tls = tls_connect(addrs.mqtts(), client_config(&pki.ca, Some(&user_cert)))
        .await
        .expect("TLS with client cert");
    let mut user = MqttConn::stream(Box::new(tls));
    user.connect(&ConnectOpts::new(true, "cert-client")).await;
    assert_eq!(user.publish("mtls/a", b"by certificate", 1).await, 0);
    assert_eq!(sub.expect_publish().payload, b"by certificate");
    wait_for_log(&server, "user=\"cert-user\"");

    // The same over WSS.
    let tls = tls_connect(addrs.https(), client_config(&pki.ca, Some(&user_cert)))
        .await
        .expect("TLS with client cert");
    let mut wss = MqttConn::ws_with(Box::new(tls), "/mqtt", "mqtt", &[])
        .await
        .expect("WSS");
    wss.connect(&ConnectOpts::new(true, "cert-wss")).await;
    assert_eq!(wss.publish("mtls/b", b"wss certificate", 1).await, 0);
    assert_eq!(sub.expect_publish().payload, b"wss certificate");

    // A CONNECT naming another user than the certificate's is refused.
    let tls = tls_connect(addrs.mqtts(), client_config(&pki.ca, Some(&user_cert)))
        .await
        .expect("TLS");
    let mut liar = MqttConn::stream(Box::new(tls));
    let opts = ConnectOpts::new(true, "liar").auth("pub", common::PUB_PASSWORD);
    assert_eq!(liar.connect_with(&opts).await.code, 0x86);

    // CN = stranger (no such user): anonymous, so its publish is refused.
    let tls = tls_connect(addrs.mqtts(), client_config(&pki.ca, Some(&stranger_cert)))
        .await
        .expect("TLS with client cert");
    let mut stranger = MqttConn::stream(Box::new(tls));
    stranger.connect(&ConnectOpts::new(true, "stranger")).await;
    assert_eq!(stranger.publish("mtls/c", b"nope", 1).await, 0x87);

    // No certificate (optional here): anonymous too.
    let tls = tls_connect(addrs.mqtts(), client_config(&pki.ca, None))
        .await
        .expect("TLS without client cert");
    let mut anonymous = MqttConn::stream(Box::new(tls));
    anonymous.anonymous(true).await;
    assert_eq!(anonymous.publish("mtls/d", b"nope", 1).await, 0x87);

    assert_eq!(user.publish("mtls/e", b"marker", 1).await, 0);
    assert_eq!(
        sub.expect_publish().payload,
        b"marker",
        "refused publishes leaked"
    );
}

/// A browser presents its client certificate to any page's WebSocket (WebSockets are not
/// bound by CORS): a cross-site upgrade is served, but anonymously, so that another site's page
/// cannot publish as the certificate's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_websocket_does_not_log_in_with_the_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, user_cert, server, addrs) = mtls_server(dir.path());
    let wss = |headers: &'static [(&'static str, &'static str)]| {
        let config = client_config(&pki.ca, Some(&user_cert));
        async move {
            let tls = tls_connect(addrs.https(), config)
                .await
                .expect("TLS with client cert");
            let mut conn = MqttConn::ws_with(Box::new(tls), "/mqtt", "mqtt", headers)
                .await
                .expect("WSS");
            conn.connect(&ConnectOpts::new(true, &Server::client_id("wss")))
                .await;
            conn
        }
    };
    let mut evil = wss(&[
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ])
    .await;
    assert_eq!(evil.publish("mtls/x", b"forged", 1).await, 0x87);
    wait_for_log(&server, "cross-site WebSocket: served anonymously");
    // The same certificate from no browser, or from this server's own page, is its user.
    let mut script = wss(&[]).await;
    assert_eq!(script.publish("mtls/x", b"real", 1).await, 0);
    let mut own_page = wss(&[("Sec-Fetch-Site", "same-origin")]).await;
    assert_eq!(own_page.publish("mtls/x", b"real", 1).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, files) = pki(dir.path());
    let options = mtls_users().with_config(&tls_toml(&files, Some(&pki.ca), true));
    let (_server, addrs) = start(options, ALL_TLS);
    // Without a certificate the handshake fails (TLS 1.3 reports it on the first read).
    let refused = match tls_connect(addrs.mqtts(), client_config(&pki.ca, None)).await {
        Err(_) => true,
        Ok(tls) => {
            let mut conn = MqttConn::stream(Box::new(tls));
            conn.send(&ConnectOpts::new(false, "no-cert").encode())
                .await;
            matches!(conn.read(common::TIMEOUT).await, Read::Closed(_))
        }
    };
    assert!(refused, "a client without certificate was served");
    // A certificate from another CA is refused too.
    let other = Pki::new(&dir.path().join("other"), "other-ca");
    let foreign = other.client("foreign", "cert-user");
    let refused = match tls_connect(addrs.mqtts(), client_config(&pki.ca, Some(&foreign))).await {
        Err(_) => true,
        Ok(tls) => {
            let mut conn = MqttConn::stream(Box::new(tls));
            conn.send(&ConnectOpts::new(false, "foreign").encode())
                .await;
            matches!(conn.read(common::TIMEOUT).await, Read::Closed(_))
        }
    };
    assert!(refused, "a certificate from another CA was accepted");
    let user_cert = pki.client("user", "cert-user");
    let tls = tls_connect(addrs.mqtts(), client_config(&pki.ca, Some(&user_cert)))
        .await
        .expect("TLS with client cert");
    let mut user = MqttConn::stream(Box::new(tls));
    user.connect(&ConnectOpts::new(false, "cert-client")).await;
    user.ping().await;
}

#[test]
fn tls_listener_without_certificate_is_a_clear_error() {
    let options = ServerOptions {
        extra_args: vec!["--mqtts".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    };
    let (mut server, startup) = Server::spawn(options);
    assert!(
        matches!(startup, Startup::Exited(_)),
        "started without a certificate"
    );
    let status = server.wait_exit();
    assert!(!status.success());
    let log = server.log();
    assert!(log.contains("tls.cert") && log.contains("tls.key"), "{log}");

    // A certificate file that does not exist is named.
    let options = ServerOptions {
        extra_args: vec![
            "--https".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            "/nonexistent/cert.pem".into(),
            "--tls-key".into(),
            "/nonexistent/key.pem".into(),
        ],
        ..ServerOptions::default()
    };
    let (mut server, startup) = Server::spawn(options);
    assert!(matches!(startup, Startup::Exited(_)));
    assert!(!server.wait_exit().success());
    assert!(
        server.log().contains("/nonexistent/cert.pem"),
        "{}",
        server.log()
    );
}

#[test]
fn mosquitto_clients_over_tls() {
    if !have_mosquitto_clients() {
        eprintln!("mosquitto-clients not installed: skipped (scripts/test installs them)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, files) = pki(dir.path());
    let flags = vec![
        "--tls-cert".to_string(),
        files.cert.display().to_string(),
        "--tls-key".to_string(),
        files.key.display().to_string(),
    ];
    let options = ServerOptions {
        extra_args: flags,
        ..ServerOptions::standard()
    };
    let (_server, addrs) = start(
        options,
        Listeners {
            http: false,
            https: false,
            mqtts: true,
        },
    );
    let ca = pki.ca.display().to_string();
    let mut sub = MosquittoSub::start(addrs.mqtts(), true, &["--cafile", &ca, "-t", "tls/#"]);
    common::mosquitto_pub_ok(
        addrs.mqtts(),
        false,
        &[
            "--cafile",
            &ca,
            "-u",
            "pub",
            "-P",
            common::PUB_PASSWORD,
            "-t",
            "tls/m",
            "-m",
            "hello over tls",
        ],
    );
    let messages = sub.wait_for_payload("hello over tls");
    assert_eq!(messages.last().map(|m| m.topic.as_str()), Some("tls/m"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_header_before_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, _, options) = tls_server(
        &dir,
        "[mqtts]\nlisten = \"off\"\nproxy_protocol = true\n[limits]\nconnect_timeout_secs = 2",
    );
    let (server, addrs) = start(options, ALL_TLS);
    let config = client_config(&pki.ca, None);
    // The header comes first, in clear, then the TLS handshake on the same connection.
    let mut tcp = tokio::net::TcpStream::connect(addrs.mqtts())
        .await
        .expect("connect");
    tcp.write_all(b"PROXY TCP4 198.51.100.77 127.0.0.1 50000 8883\r\n")
        .await
        .expect("PROXY header");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("TLS after the PROXY header");
    let mut client = MqttConn::stream(Box::new(tls));
    client.anonymous(true).await;
    client.ping().await;
    wait_for_log(&server, "peer=198.51.100.77:50000");
    // Without the header, the TLS ClientHello is not a PROXY header: closed.
    let refused = match tls_connect(addrs.mqtts(), config).await {
        Err(_) => true,
        Ok(tls) => {
            let mut conn = MqttConn::stream(Box::new(tls));
            conn.send(&ConnectOpts::new(false, "no-header").encode())
                .await;
            matches!(conn.read(common::TIMEOUT).await, Read::Closed(_))
        }
    };
    assert!(refused, "a TLS client without PROXY header was served");
    client.ping().await;
    // The HTTPS listener does not use the PROXY protocol.
    let tls = tls_connect(addrs.https(), client_config(&pki.ca, None))
        .await
        .expect("HTTPS without a PROXY header");
    let (status, _) = http_request(
        Box::new(tls),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
}
