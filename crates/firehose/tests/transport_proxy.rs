//! PROXY protocol v1 and v2 on the MQTT listener: the client address comes from the header (it
//! shows in the log and counts for the per-address connection limit), a connection without a
//! valid header is closed alone, and a listener without `proxy_protocol` ignores nothing.

mod common;

use common::wire::ConnectOpts;
use common::{assert_serves, RawClient, Server, ServerOptions};

fn proxy_server(extra: &str) -> Server {
    Server::start(
        ServerOptions::standard()
            .with_config("[mqtt]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true")
            .with_config(extra),
    )
}

fn v1(ip: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {ip} 127.0.0.1 {port} 1883\r\n").into_bytes()
}

fn v2_inet(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend([0x21, 0x11, 0, 12]);
    out.extend(ip);
    out.extend([127, 0, 0, 1]);
    out.extend(port.to_be_bytes());
    out.extend(1883u16.to_be_bytes());
    out
}

/// Opens a connection, sends `header` and CONNECT; returns the client and the CONNACK code, or
/// `None` when the server closed instead.
fn connect_through(server: &Server, header: &[u8], v5: bool) -> (RawClient, Option<u8>) {
    let mut client = RawClient::tcp(server.addr);
    let mut bytes = header.to_vec();
    bytes.extend(ConnectOpts::new(v5, &Server::client_id("proxied")).encode());
    client.send(&bytes);
    match client.read(common::TIMEOUT) {
        common::Got::Packet(p) => {
            let code = p.connack(v5).expect("CONNACK").code;
            (client, Some(code))
        }
        _ => (client, None),
    }
}

/// A connection through the proxy that works.
fn proxied_serves(server: &Server) {
    let (mut client, code) = connect_through(server, &v1("198.51.100.200", 1), true);
    assert_eq!(code, Some(0));
    client.ping();
}

#[test]
fn v1_and_v2_headers_give_the_client_address() {
    let server = proxy_server("[limits]\nmax_connections_per_ip = 1");
    let (mut a, code) = connect_through(&server, &v1("203.0.113.7", 40001), false);
    assert_eq!(code, Some(0));
    a.ping();
    common_log_contains(&server, "peer=203.0.113.7:40001");
    let (mut b, code) = connect_through(&server, &v2_inet([198, 51, 100, 9], 40002), true);
    assert_eq!(code, Some(0));
    b.ping();
    common_log_contains(&server, "peer=198.51.100.9:40002");
    // Both came from 127.0.0.1, yet each counts for its own address: a second connection from
    // 203.0.113.7 is over the per-address limit and closed.
    let (_, code) = connect_through(&server, &v1("203.0.113.7", 40003), false);
    assert_eq!(
        code, None,
        "per-address limit must apply to the proxied address"
    );
    // The LOCAL command (proxy health checks) uses the socket address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    let (mut c, code) = connect_through(&server, &local, false);
    assert_eq!(code, Some(0));
    c.ping();
}

#[test]
fn missing_or_bad_header_closes_only_that_connection() {
    let server = proxy_server("[limits]\nconnect_timeout_secs = 1");
    let (mut keeper, code) = connect_through(&server, &v1("192.0.2.1", 1), false);
    assert_eq!(code, Some(0));
    for bad in [
        Vec::new(),                                         // CONNECT without header
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n".to_vec(), // malformed v1
        b"PROXY TCP4 1.2.3.4 127.0.0.1 1".to_vec(),         // unfinished: times out
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),                 // something else entirely
    ] {
        let (mut client, code) = connect_through(&server, &bad, false);
        assert_eq!(
            code,
            None,
            "header {:?} was accepted",
            String::from_utf8_lossy(&bad)
        );
        client.expect_closed();
    }
    keeper.ping();
    proxied_serves(&server);
}

#[test]
fn without_proxy_protocol_a_header_is_garbage() {
    let server = Server::standard();
    let mut client = RawClient::tcp(server.addr);
    // "PROXY ..." reads as a packet of type 5 (PUBREC) before CONNECT; once its announced
    // length has arrived, the broker closes the connection.
    client.send(&v1("203.0.113.7", 1));
    client.send(&[0u8; 100]);
    client.expect_closed();
    assert_serves(server.addr);
}

fn common_log_contains(server: &Server, needle: &str) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !server.log().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
