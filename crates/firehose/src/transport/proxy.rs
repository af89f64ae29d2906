//! The client's address behind a proxy: the PROXY protocol (v1 text and v2 binary, as HAProxy
//! specifies them) on MQTT listeners, and `X-Forwarded-For` from trusted proxies on HTTP.
//!
//! A PROXY header is read byte-exactly, so the bytes after it (the TLS handshake or MQTT
//! CONNECT) stay in the socket for whoever reads next.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::IpBlock;

/// The 12-byte signature that starts a v2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;
/// Largest v2 address block we accept (addresses plus TLVs; HAProxy sends far less).
const V2_MAX: usize = 1024;

/// Why a PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading failed or the connection closed within the header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The connection does not start with a PROXY header.
    #[error("expected a PROXY protocol header (\"PROXY ...\" or the v2 signature), got {0:?}")]
    Missing(String),
    /// The header is malformed.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads a PROXY v1 or v2 header from the start of `stream`. Returns the client's address, or
/// `None` for headers that carry none (v1 `UNKNOWN`, v2 `LOCAL` or a non-IP family: health
/// checks by the proxy itself), in which case the socket's peer address is the one to use.
///
/// # Errors
/// [`ProxyError`] when the stream does not start with a valid header.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    // Both versions start with at least 12 bytes ("PROXY UNKNOWN\r\n" is 15).
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE {
        read_v2(stream).await
    } else if start.starts_with(b"PROXY ") {
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(ProxyError::Malformed(format!(
                    "v1 line longer than {V1_MAX} bytes"
                )));
            }
            line.push(stream.read_u8().await?);
        }
        parse_v1(&line[..line.len() - 2])
    } else {
        Err(ProxyError::Missing(
            String::from_utf8_lossy(&start).into_owned(),
        ))
    }
}

/// Parses a v1 line without its CRLF: `PROXY TCP4 SRC DST SPORT DPORT`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let bad = |why: &str| {
        ProxyError::Malformed(format!(
            "{why} in v1 line {:?}",
            String::from_utf8_lossy(line)
        ))
    };
    let text = std::str::from_utf8(line).map_err(|_| bad("non-ASCII bytes"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad("no PROXY keyword"));
    }
    let family = parts.next().ok_or_else(|| bad("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return Err(bad("expected 4 fields after the protocol"));
    };
    let ip: IpAddr = match family {
        "TCP4" => src.parse::<Ipv4Addr>().map(IpAddr::V4),
        "TCP6" => src.parse::<Ipv6Addr>().map(IpAddr::V6),
        _ => return Err(bad("protocol must be TCP4, TCP6 or UNKNOWN")),
    }
    .map_err(|_| bad("bad source address"))?;
    let port: u16 = sport.parse().map_err(|_| bad("bad source port"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

async fn read_v2<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let [version_command, family, len_hi, len_lo] = head;
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed(format!(
            "v2 version must be 2, got {}",
            version_command >> 4
        )));
    }
    if len > V2_MAX {
        return Err(ProxyError::Malformed(format!(
            "v2 address block of {len} bytes (at most {V2_MAX})"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    match version_command & 0x0f {
        // LOCAL: the proxy speaking for itself (health checks).
        0 => return Ok(None),
        1 => {}
        command => {
            return Err(ProxyError::Malformed(format!(
                "v2 command must be LOCAL (0) or PROXY (1), got {command}"
            )))
        }
    }
    let short = || ProxyError::Malformed(format!("v2 address block of {len} bytes is too short"));
    match family >> 4 {
        // AF_INET: src(4) dst(4) sport(2) dport(2)
        1 => {
            let b = body.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([b[8], b[9]]),
            )))
        }
        // AF_INET6: src(16) dst(16) sport(2) dport(2)
        2 => {
            let b = body.get(..36).ok_or_else(short)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([b[32], b[33]]),
            )))
        }
        // AF_UNSPEC or AF_UNIX: no IP address to report.
        _ => Ok(None),
    }
}

/// The client address of an HTTP request: when the connection comes from a trusted proxy, the
/// last address of `X-Forwarded-For` that is not itself a trusted proxy (proxies append, so the
/// addresses to the left could be forged by the client). Otherwise, or when the header holds
/// nothing usable, the connection's own peer address.
pub fn forwarded_client<'a>(
    peer: SocketAddr,
    trusted: &[IpBlock],
    forwarded_for: impl Iterator<Item = &'a str>,
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    // Several headers count as one comma-separated list, in order.
    let hops: Vec<&str> = forwarded_for
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage from here on leftwards: stop at the last address we could trust.
            break;
        };
        client = SocketAddr::new(ip, 0);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(s: &str) -> IpBlock {
        IpBlock::parse(s).expect("block")
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut stream = bytes;
        let result = read_header(&mut stream).await;
        (result, stream.to_vec())
    }

    #[tokio::test]
    async fn v1_tcp4_leaves_the_rest() {
        let (addr, rest) = read(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 1883\r\n\x10\x00").await;
        assert_eq!(
            addr.expect("valid"),
            Some("192.0.2.7:5555".parse().expect("addr"))
        );
        assert_eq!(rest, b"\x10\x00");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (addr, _) = read(b"PROXY TCP6 2001:db8::1 ::1 40000 1883\r\n").await;
        assert_eq!(
            addr.expect("valid"),
            Some("[2001:db8::1]:40000".parse().expect("addr"))
        );
        let (addr, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(addr.expect("valid"), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 127.0.0.1 99999 2\r\n",
            b"PROXY UDP4 1.2.3.4 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
        ] {
            assert!(
                matches!(read(bad).await.0, Err(ProxyError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(read(&long).await.0, Err(ProxyError::Malformed(_))));
        // Truncated: the connection closed within the header.
        assert!(matches!(
            read(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyError::Io(_))
        ));
    }

    #[tokio::test]
    async fn missing_header() {
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert!(matches!(read(connect).await.0, Err(ProxyError::Missing(_))));
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn v2_inet_inet6_local() {
        let mut body = vec![198, 51, 100, 9, 127, 0, 0, 1];
        body.extend(4242u16.to_be_bytes());
        body.extend(1883u16.to_be_bytes());
        body.extend([0x04, 0x00, 0x01, 0x00]); // a TLV (NOOP), skipped
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend(b"after");
        let (addr, rest) = read(&bytes).await;
        assert_eq!(
            addr.expect("valid"),
            Some("198.51.100.9:4242".parse().expect("addr"))
        );
        assert_eq!(rest, b"after");

        let mut body = "2001:db8::2"
            .parse::<Ipv6Addr>()
            .expect("ip")
            .octets()
            .to_vec();
        body.extend(Ipv6Addr::LOCALHOST.octets());
        body.extend(7u16.to_be_bytes());
        body.extend(8u16.to_be_bytes());
        let (addr, _) = read(&v2(1, 0x21, &body)).await;
        assert_eq!(
            addr.expect("valid"),
            Some("[2001:db8::2]:7".parse().expect("addr"))
        );

        let (addr, rest) = read(&[v2(0, 0, &[]), b"z".to_vec()].concat()).await;
        assert_eq!(addr.expect("LOCAL"), None);
        assert_eq!(rest, b"z");
    }

    #[tokio::test]
    async fn v2_malformed() {
        assert!(matches!(
            read(&v2(1, 0x11, &[1, 2, 3])).await.0,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            read(&v2(5, 0x11, &[0; 12])).await.0,
            Err(ProxyError::Malformed(_))
        ));
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(matches!(
            read(&wrong_version).await.0,
            Err(ProxyError::Malformed(_))
        ));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let trusted = [block("127.0.0.0/8"), block("10.0.0.0/8")];
        let client = forwarded_client(proxy, &trusted, ["203.0.113.5"].into_iter());
        assert_eq!(client.ip(), "203.0.113.5".parse::<IpAddr>().expect("ip"));
        // The client may forge addresses on the left; the rightmost untrusted one counts.
        let client = forwarded_client(
            proxy,
            &trusted,
            ["1.1.1.1, 203.0.113.5", "10.1.1.1"].into_iter(),
        );
        assert_eq!(client.ip(), "203.0.113.5".parse::<IpAddr>().expect("ip"));
        // From an untrusted peer the header is ignored.
        let stranger: SocketAddr = "192.0.2.1:1".parse().expect("addr");
        assert_eq!(
            forwarded_client(stranger, &trusted, ["203.0.113.5"].into_iter()),
            stranger
        );
        // No header, or garbage: the peer itself.
        assert_eq!(forwarded_client(proxy, &trusted, std::iter::empty()), proxy);
        assert_eq!(
            forwarded_client(proxy, &trusted, ["unknown"].into_iter()),
            proxy
        );
        let client = forwarded_client(proxy, &trusted, ["[2001:db8::5]:443"].into_iter());
        assert_eq!(client.ip(), "2001:db8::5".parse::<IpAddr>().expect("ip"));
    }
}
