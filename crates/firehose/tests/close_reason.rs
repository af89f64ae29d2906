//! A reason that reaches the client: when the broker ends a connection with a DISCONNECT
//! reason code, a client that is still writing gets to read it. The broker shuts its write
//! half and reads what the client still sends for a moment, instead of closing a socket with
//! unread bytes (which makes the kernel answer with a reset: the client's next write fails with
//! a broken pipe, as in the Eclipse Paho MQTT 5 suite's `test_flow_control2`).
//!
//! Plain sockets, so that every write's result is seen; packets from `common::wire`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use common::wire::{self, ConnectOpts, PublishOut, RawPacket};
use common::{Server, ServerOptions, PUB_PASSWORD, TIMEOUT};

/// A logged-in MQTT 5 publisher on a plain socket, and what it has read but not parsed.
struct Publisher {
    stream: TcpStream,
    unread: Vec<u8>,
}

impl Publisher {
    fn connect(addr: SocketAddr) -> Publisher {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut publisher = Publisher {
            stream,
            unread: Vec::new(),
        };
        let connect =
            ConnectOpts::new(true, &Server::client_id("writer")).auth("pub", PUB_PASSWORD);
        publisher
            .stream
            .write_all(&connect.encode())
            .expect("CONNECT");
        let connack = publisher.packet().expect("CONNACK");
        assert_eq!(connack.connack(true).expect("CONNACK").code, 0);
        publisher
    }

    /// The next packet, or `None` at the end of the stream (an error is a failed test: a
    /// reset is exactly what must not happen).
    fn packet(&mut self) -> Option<RawPacket> {
        loop {
            if let Some(packet) = wire::split_packet(&mut self.unread).expect("a valid packet") {
                return Some(packet);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.unread.extend(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("reading after the broker's DISCONNECT: {e}"),
            }
        }
    }

    /// Publishes QoS 2 messages `ids` (never released) in one write: beyond the broker's
    /// Receive Maximum, the connection ends with 0x93, which this asserts.
    fn exceed_receive_maximum(&mut self, ids: std::ops::RangeInclusive<u16>) {
        let burst: Vec<u8> = ids.flat_map(qos2).collect();
        self.stream.write_all(&burst).expect("the publishes");
        assert_eq!(self.disconnect_reason(), 0x93, "Receive Maximum exceeded");
    }

    /// Asserts that the broker ended the stream cleanly after its DISCONNECT (no reset).
    fn expect_clean_end(&mut self) {
        assert!(
            self.packet().is_none(),
            "nothing after the DISCONNECT but the end"
        );
    }

    /// Reads up to the DISCONNECT; returns its reason code.
    fn disconnect_reason(&mut self) -> u8 {
        loop {
            let packet = self
                .packet()
                .expect("a DISCONNECT before the end of the stream");
            if packet.kind() == wire::DISCONNECT {
                return packet.disconnect_reason().expect("DISCONNECT");
            }
        }
    }
}

/// A QoS 2 PUBLISH with packet id `id`.
fn qos2(id: u16) -> Vec<u8> {
    PublishOut::new("flow/control", b"m")
        .qos(2, id)
        .encode(true)
}

/// A broker with `limits` (TOML lines) and a publisher logged in to it.
fn publisher_with(limits: &str) -> (Server, Publisher) {
    let server =
        Server::start(ServerOptions::standard().with_config(&format!("[limits]\n{limits}")));
    let client = Publisher::connect(server.addr);
    (server, client)
}

/// `test_flow_control2`: QoS 2 publishes beyond the broker's Receive Maximum, never released,
/// end the connection with 0x93. The client, which has not read that yet, goes on publishing:
/// its writes must land (not "broken pipe"), and then it reads the reason and a clean end.
#[test]
fn a_client_still_publishing_after_receive_maximum_reads_the_reason() {
    let (_server, mut client) = publisher_with("receive_maximum = 10\n");
    client.exceed_receive_maximum(1..=11);
    // Publishes that crossed the DISCONNECT on the wire: a closed socket would answer the
    // first with a reset and fail the next ones. Spaced so that a reset would be back.
    for id in 12..=14 {
        thread::sleep(Duration::from_millis(30));
        if let Err(e) = client.stream.write_all(&qos2(id)) {
            panic!("publish {id}, written after the broker decided to close: {e}");
        }
    }
    client.expect_clean_end();
}

/// A packet over `max_packet_size` is refused from its fixed header (0x95), while the client
/// is still writing its body: the body is read and discarded, the client reads the reason.
#[test]
fn a_client_writing_a_packet_too_large_reads_the_reason() {
    let (_server, mut client) = publisher_with("max_packet_size = 65536\n");
    let big = PublishOut::new("too/large", &vec![b'x'; 900 * 1024]).encode(true);
    // Written the way a slow link delivers it, so that it is still on its way when the broker
    // has refused it (from its fixed header) and closed: what reaches a closed socket is
    // answered with a reset.
    for (n, chunk) in big.chunks(64 * 1024).enumerate() {
        if let Err(e) = client.stream.write_all(chunk) {
            panic!("chunk {n} of a packet the broker refused from its header: {e}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.disconnect_reason(), 0x95, "Packet too large");
    client.expect_clean_end();
}

/// What the broker reads after its DISCONNECT is bounded in bytes: a client that keeps
/// writing is cut off (its writes fail) rather than read forever.
#[test]
fn a_client_that_keeps_writing_after_the_disconnect_is_cut_off() {
    let (_server, mut client) = publisher_with("receive_maximum = 1\n");
    client.exceed_receive_maximum(1..=2);
    client
        .stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("timeout");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    let error = loop {
        match client.stream.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(
            written < 64 << 20,
            "the broker read 64 MiB after its DISCONNECT"
        );
    };
    assert!(
        matches!(
            error.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "writes after the DISCONNECT ended with {error} after {written} bytes, not a reset"
    );
}

/// ... and in time: a client that neither writes nor closes after the DISCONNECT gives its
/// connection slot back (here the only one its address has) soon after.
#[test]
fn a_silent_client_after_the_disconnect_gives_its_slot_back() {
    let (server, mut client) = publisher_with("receive_maximum = 1\nmax_connections_per_ip = 1\n");
    client.exceed_receive_maximum(1..=2);
    // The client stays, silent. Another connection from its address is refused until the
    // broker let go of the first.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let mut other = common::RawClient::tcp(server.addr);
        other.send(&ConnectOpts::new(true, &Server::client_id("next")).encode());
        if let common::Got::Packet(connack) = other.read(TIMEOUT) {
            assert_eq!(connack.connack(true).expect("CONNACK").code, 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closing connection still holds its slot after {TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(client);
}
