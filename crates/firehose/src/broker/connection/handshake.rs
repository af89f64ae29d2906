//! The CONNECT handshake: the first packet, authentication (password or the transport's client
//! certificate), both within one deadline (`limits.connect_timeout_secs` from the first byte),
//! the client id (assigned when empty, unguessable), keep alive and session expiry (shorter for
//! anonymous clients), the session attached (resumed or taken over, by its owner only; a new
//! anonymous persistent one within its quota), and CONNACK. What it builds is the
//! [`Connection`] the serve loop then runs; a refusal is answered with CONNACK and a graceful
//! close (`end::refuse`).
//!
//! Depends on the broker's shared state (password checks, the session registry, saves), the
//! publish verdict (for the will) and the outbox; hands the connection to the serve loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use firehose_codec::{
    decode, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Protocol, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info};

use super::end::{refuse, End};
use super::save::save_and_wait;
use super::serve::poll_read_some;
use super::Connection;
use crate::auth::{AuthFailure, Identity};
use crate::broker::outbox::Outbox;
use crate::broker::passwords::LoginRefusal;
use crate::broker::pipeline::publish_verdict;
use crate::broker::quota::granted_expiry;
use crate::broker::registry::{unguessable_id, AttachRefusal, AttachRequest};
use crate::broker::session::Owner;
use crate::broker::shared::Shared;
use crate::broker::stats;
use crate::broker::ConnectionInfo;

/// Reads the CONNECT and does the handshake. Returns `None` when the connection ended (and
/// was answered as it should be).
pub(super) async fn open<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    info: ConnectionInfo,
) -> Option<Connection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    // One deadline over the whole opening (the CONNECT and its password check), so that a
    // client can neither trickle its CONNECT nor wait its turn for a check without bound.
    let deadline = Instant::now() + Duration::from_secs(shared.limits().connect_timeout_secs);
    let first = timeout_at(deadline, read_first_packet(shared, stream, rbuf)).await;
    let connect = match first {
        Err(_) => {
            stats::add(&shared.stats().connect_timeouts, 1);
            info!(%peer, "closing connection: no CONNECT within {}s",
                shared.limits().connect_timeout_secs);
            return None;
        }
        Ok(Err(FirstPacketError::Closed)) => {
            debug!(%peer, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(FirstPacketError::Io(error))) => {
            debug!(%peer, "connection failed before CONNECT: {error}");
            return None;
        }
        Ok(Err(FirstPacketError::Decode(error))) => {
            stats::add(&shared.stats().protocol_errors, 1);
            info!(%peer, "closing connection: {error}");
            if let DecodeError::UnsupportedProtocol(_) = error {
                // 3.1.1 section 3.1.2.2: answer return code 1, then close.
                let refusal = connack(ReasonCode::UnsupportedProtocolVersion);
                refuse(stream, &refusal, Protocol::V311).await;
            }
            return None;
        }
        Ok(Ok(Packet::Connect(connect))) => *connect,
        Ok(Ok(other)) => {
            stats::add(&shared.stats().protocol_errors, 1);
            info!(%peer, "closing connection: expected CONNECT as first packet, got {}", other.name());
            return None;
        }
    };
    handshake(shared, connect, &info, stream, deadline).await
}

/// Why no first packet was read.
#[derive(Debug)]
enum FirstPacketError {
    /// The client closed the connection before a whole packet.
    Closed,
    /// Reading failed.
    Io(std::io::Error),
    /// The bytes were not a valid packet (or an unsupported protocol version).
    Decode(DecodeError),
}

/// Reads until one whole packet is decoded (as MQTT 3.1.1 until CONNECT says otherwise).
async fn read_first_packet<R: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut R,
    rbuf: &mut BytesMut,
) -> Result<Packet, FirstPacketError> {
    let max = shared.limits().max_packet_size as usize;
    loop {
        if let Some(packet) = decode(rbuf, Protocol::V311, max).map_err(FirstPacketError::Decode)? {
            return Ok(packet);
        }
        let n = std::future::poll_fn(|cx| poll_read_some(reader, rbuf, cx))
            .await
            .map_err(FirstPacketError::Io)?;
        if n == 0 {
            return Err(FirstPacketError::Closed);
        }
        stats::add(&shared.stats().bytes_received, n as u64);
    }
}

/// The identity of a client the transport authenticated (TLS client certificate): the CONNECT
/// user name, if any, must be that user.
fn authenticate_by_transport(
    shared: &Shared,
    user: &str,
    connect_username: Option<&str>,
) -> Result<Identity, AuthFailure> {
    if connect_username.is_some_and(|name| name != user) {
        return Err(AuthFailure::BadCredentials);
    }
    shared.identity_of(user).ok_or(AuthFailure::BadCredentials)
}

/// A CONNACK with `reason` and no session: what a refused client is told.
fn connack(reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    })
}

/// The CONNACK reason for a login refused by the password checks; `None` when the check did
/// not end before the handshake's deadline. Only a check that ran says "bad user name or
/// password": a login refused unchecked is told to come back later, so that a client with the
/// right password neither believes it wrong nor gives up (MQTT clients retry on 0x88/0x89 and
/// 3.1.1's 3, and many stop on 0x86 and 4).
fn refusal_reason(refused: Option<LoginRefusal>) -> ReasonCode {
    match refused {
        Some(LoginRefusal::BadCredentials) => ReasonCode::BadUserNameOrPassword,
        Some(LoginRefusal::BackingOff) => ReasonCode::ServerBusy,
        Some(LoginRefusal::Busy) | None => ReasonCode::ServerUnavailable,
    }
}

/// Identifiers for clients that connect with an empty one: unguessable, because an MQTT 5
/// client may keep a persistent session under it, and anonymous clients may resume any
/// anonymous session whose client id they know.
fn assign_client_id() -> String {
    unguessable_id("firehose-")
}

/// Authenticates (before `deadline`), chooses client id, keep alive and session expiry,
/// attaches the session and writes CONNACK. Returns `None` when the connection was refused
/// (and answered).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    connect: Connect,
    info: &ConnectionInfo,
    writer: &mut S,
    deadline: Instant,
) -> Option<Connection> {
    let peer = info.peer;
    let protocol = connect.protocol;
    let limits = &shared.limits();
    let user = connect.username.as_deref();
    let refusal = |reason: ReasonCode, why: &str| {
        info!(%peer, client = ?connect.client_id, user = ?user.unwrap_or(""),
            "refused CONNECT: {why}");
        connack(reason)
    };
    if protocol == Protocol::V5 && connect.properties.authentication_method.is_some() {
        let packet = refusal(
            ReasonCode::BadAuthenticationMethod,
            "extended authentication is not supported",
        );
        refuse(writer, &packet, protocol).await;
        return None;
    }
    let checked = match &info.authenticated_user {
        Some(name) => {
            Some(authenticate_by_transport(shared, name, user).map_err(LoginRefusal::from))
        }
        None => {
            let check = shared.check_password(peer.ip(), user, connect.password.as_deref());
            timeout_at(deadline, check).await.ok()
        }
    };
    let identity = match checked {
        Some(Ok(identity)) => identity,
        Some(Err(LoginRefusal::BadCredentials)) => {
            let packet = refusal(
                ReasonCode::BadUserNameOrPassword,
                "bad user name or password",
            );
            refuse(writer, &packet, protocol).await;
            return None;
        }
        refused => {
            // Refused unchecked: counted, and logged below info (a flood would fill the log).
            let refused = refused.and_then(Result::err);
            if refused.is_none() {
                stats::add(&shared.stats().connect_timeouts, 1);
            }
            let why = refused.map_or_else(
                || "no password check within limits.connect_timeout_secs".to_owned(),
                |refused| refused.to_string(),
            );
            debug!(%peer, client = ?connect.client_id, user = ?user.unwrap_or(""),
                "refused CONNECT: {why}");
            refuse(writer, &connack(refusal_reason(refused)), protocol).await;
            return None;
        }
    };
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if protocol == Protocol::V311 && !connect.clean_start {
            let packet = refusal(
                ReasonCode::ClientIdentifierNotValid,
                "an empty client id needs clean session (MQTT 3.1.1 section 3.1.3.1)",
            );
            refuse(writer, &packet, protocol).await;
            return None;
        }
        let id = assign_client_id();
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.clone().into()
    };

    let requested_expiry = requested_expiry(
        protocol,
        connect.clean_start,
        connect.properties.session_expiry_interval,
    );
    let expiry = granted_expiry(limits, &identity, requested_expiry);
    let (keep_alive, server_keep_alive) =
        granted_keep_alive(protocol, connect.keep_alive, limits.max_keep_alive);

    let will = match connect.will {
        Some(will) => match publish_verdict(limits, &identity, &will.topic) {
            ReasonCode::Success => Some(Box::new(will)),
            refused => {
                debug!(%peer, client = ?client_id, topic = ?will.topic, reason = ?refused,
                    "will refused (access model or limits.max_topic_levels): it will never be published");
                None
            }
        },
        None => None,
    };

    let request = AttachRequest {
        clean_start: connect.clean_start,
        expiry_interval: expiry,
        protocol,
        queue_limit: usize::try_from(limits.send_queue).unwrap_or(usize::MAX),
        cursor: shared.last_event_id(),
        owner: Owner::of(&identity),
        address: peer.ip(),
    };
    let attached = match shared.attach(&client_id, &identity, peer, request) {
        Ok(attached) => attached,
        Err(refused) => {
            // Another identity's client id is logged like a bad password; a full quota was
            // logged once for its run of refusals.
            let packet = match &refused {
                AttachRefusal::NotOwner(_) => refusal(refused.reason(), &refused.to_string()),
                AttachRefusal::Quota(_) => connack(refused.reason()),
            };
            refuse(writer, &packet, protocol).await;
            return None;
        }
    };
    // CONNACK says "session present": the stored session must agree if we crash right after.
    save_and_wait(shared, &attached.session, true).await;

    let mut properties = ConnAckProperties::default();
    if protocol == Protocol::V5 {
        properties.receive_maximum = Some(limits.receive_maximum);
        properties.maximum_packet_size = Some(limits.max_packet_size);
        properties.topic_alias_maximum =
            (limits.topic_alias_maximum > 0).then_some(limits.topic_alias_maximum);
        properties.assigned_client_identifier = assigned;
        properties.server_keep_alive = server_keep_alive;
        if expiry != requested_expiry {
            properties.session_expiry_interval = Some(expiry);
        }
    }
    let ack = Packet::ConnAck(ConnAck {
        session_present: attached.session_present,
        reason: ReasonCode::Success,
        properties,
    });
    let mut outbox = Outbox::default();
    let written = match outbox.push_packet(&ack, protocol) {
        Ok(size) => {
            stats::add(&shared.stats().bytes_sent, size as u64);
            outbox.write_all(writer).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let conn = Connection {
        save_ticket: 0,
        unsaved_publishes: 0,
        pending_acks: 0,
        publishes: false,
        saved_cursor: 0,
        shared: shared.clone(),
        session: attached.session,
        generation: attached.generation,
        protocol,
        identity,
        peer,
        will,
        expiry,
        keep_alive_ms: u32::from(keep_alive) * 1500,
        window: connect
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(limits.max_inflight),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        extra: None,
        // No more aliases towards a client than it may use towards us: each holds a topic name
        // for the life of the connection, and a client may ask for 65,535.
        alias_out_max: connect
            .properties
            .topic_alias_maximum
            .unwrap_or(0)
            .min(limits.topic_alias_maximum),
        problem_information: connect
            .properties
            .request_problem_information
            .unwrap_or(true),
    };
    stats::add(&shared.stats().clients_connected, 1);
    info!(
        client = ?conn.session.client_id,
        %peer,
        transport = info.transport,
        protocol = ?protocol,
        user = ?conn.identity.name(),
        clean_start = connect.clean_start,
        session_present = attached.session_present,
        "client connected"
    );
    if let Err(error) = written {
        let end = End::Lost(format!("could not send CONNACK: {error}"));
        let mut empty = Outbox::default();
        conn.finish(end, writer, &mut empty).await;
        return None;
    }
    Some(conn)
}

/// The Session Expiry Interval a client asks for: MQTT 5 says it (0 when absent); an MQTT
/// 3.1.1 session ends with its connection under clean session and never expires without.
fn requested_expiry(protocol: Protocol, clean_start: bool, asked: Option<u32>) -> u32 {
    match protocol {
        Protocol::V5 => asked.unwrap_or(0),
        Protocol::V311 if clean_start => 0,
        Protocol::V311 => u32::MAX,
    }
}

/// The keep alive a connection runs with, and the Server Keep Alive an MQTT 5 client is told:
/// `max` (`limits.max_keep_alive`, 0 for none) replaces a keep alive of 0 (none) or above it.
/// An MQTT 3.1.1 client cannot be told, so its keep alive stands.
fn granted_keep_alive(protocol: Protocol, asked: u16, max: u16) -> (u16, Option<u16>) {
    if protocol == Protocol::V5 && max > 0 && (asked == 0 || asked > max) {
        (max, Some(max))
    } else {
        (asked, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v3_session_persists_without_clean_session_and_a_v5_one_as_asked() {
        assert_eq!(requested_expiry(Protocol::V311, true, Some(60)), 0);
        assert_eq!(requested_expiry(Protocol::V311, false, None), u32::MAX);
        assert_eq!(requested_expiry(Protocol::V5, false, None), 0);
        assert_eq!(requested_expiry(Protocol::V5, true, Some(60)), 60);
    }

    #[test]
    fn the_broker_keep_alive_replaces_none_or_a_longer_one_for_v5_clients_only() {
        assert_eq!(granted_keep_alive(Protocol::V5, 0, 60), (60, Some(60)));
        assert_eq!(granted_keep_alive(Protocol::V5, 90, 60), (60, Some(60)));
        assert_eq!(granted_keep_alive(Protocol::V5, 30, 60), (30, None));
        assert_eq!(
            granted_keep_alive(Protocol::V5, 0, 0),
            (0, None),
            "no maximum"
        );
        assert_eq!(granted_keep_alive(Protocol::V311, 0, 60), (0, None));
    }

    /// `limits.connect_timeout_secs` ends a login that waits for a password check too: it is
    /// answered "Server unavailable" rather than left waiting.
    #[tokio::test]
    async fn the_deadline_covers_the_wait_for_a_password_check() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let hash = crate::auth::hash_password(b"secret").expect("hash");
        let users = crate::auth::Users::parse(&format!(
            "[[user]]\nname = \"pub\"\npassword = \"{hash}\"\npublish = [\"#\"]\n"
        ))
        .expect("users");
        let limits = crate::config::Limits {
            connect_timeout_secs: 1,
            ..crate::config::Limits::default()
        };
        let (broker, _dir) = crate::broker::test_broker(limits, users);
        let cores = broker.shared.passwords().hold_cores();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let info = ConnectionInfo::new(peer, "tcp");
        tokio::spawn(super::super::run(broker.shared.clone(), stream, info, ()));
        let connect = Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: "waiting".into(),
            will: None,
            username: Some("pub".into()),
            password: Some(bytes::Bytes::from_static(b"secret")),
            properties: Default::default(),
        }));
        let mut bytes = BytesMut::new();
        firehose_codec::encode(&connect, Protocol::V311, &mut bytes).expect("encode");
        client.write_all(&bytes).await.expect("send CONNECT");
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut answer))
            .await
            .expect("answered before the check could run")
            .expect("CONNACK");
        assert_eq!(answer, [0x20, 2, 0, 3], "CONNACK: server unavailable");
        let stats = broker.stats();
        assert_eq!(stats::get(&stats.connect_timeouts), 1);
        assert_eq!(stats::get(&stats.auth.checks), 0);
        drop(cores);
    }

    #[test]
    fn assigned_client_ids_do_not_repeat() {
        let first = assign_client_id();
        assert!(first.starts_with("firehose-"));
        assert_ne!(first, assign_client_id());
    }
}
