//! One task per connection: the CONNECT handshake, then a loop that reads packets, runs the QoS
//! state machines, moves queued deliveries into the outbox and writes them in batches.
//!
//! Every way a connection can end goes through [`End`], which decides the will, the session's
//! fate and the final DISCONNECT an MQTT 5 client is owed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use firehose_codec::{
    decode, encode, AckProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect,
    DisconnectProperties, EncodeError, Packet, Protocol, PubResponse, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tracing::{debug, info, warn};

use super::message::{now_ms, Delivery, Message, Variant};
use super::outbox::Outbox;
use super::pipeline::{publish_verdict, Accepted, Publications};
use super::session::{AttachRequest, Inflight, LinkSignal, Session, Stage, Subscriptions};
use super::shared::Shared;
use super::stats;
use super::subscription::{parse_filter, SubOptions};
use super::ConnectionInfo;
use crate::auth::{AuthFailure, Identity};
use crate::store::{Page, StoreError};
use crate::topic;

/// Stop reading from a client while this many bytes wait to be written to it, so a client that
/// floods without reading cannot grow our memory.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Most bytes of topic names a client's topic aliases may hold. Without it, any client
/// (anonymous ones too: an alias is set before the publish is judged) could keep
/// `topic_alias_maximum` topics of 64 KiB each, 64 MiB, for the life of its connection. The
/// same room as the write queue's.
const MAX_ALIAS_TOPIC_BYTES: usize = 256 * 1024;
/// Read buffer growth step while a packet is incomplete, and the most one read of a connection
/// with an empty read buffer takes.
const READ_CHUNK: usize = 16 * 1024;
/// Free space below which the read buffer of an incomplete packet grows by [`READ_CHUNK`].
const MIN_READ_SPACE: usize = 512;
/// How long final packets may take to leave before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; `with_will` for MQTT 5 reason 0x04.
    Client { with_will: bool },
    /// The connection broke or the client vanished: the will is published.
    Lost(String),
    /// The client broke the protocol; MQTT 5 clients get DISCONNECT with `reason`.
    Violation { reason: ReasonCode, message: String },
    /// No packet within 1.5 times the keep alive.
    KeepAliveTimeout,
    /// Another connection with the same client id took the session.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

impl End {
    fn violation(reason: ReasonCode, message: impl Into<String>) -> End {
        End::Violation {
            reason,
            message: message.into(),
        }
    }

    fn from_decode(error: DecodeError) -> End {
        let reason = match &error {
            DecodeError::Malformed { .. } => ReasonCode::MalformedPacket,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::Protocol { .. } | DecodeError::UnsupportedProtocol(_) => {
                ReasonCode::ProtocolError
            }
        };
        End::violation(reason, error.to_string())
    }

    /// The DISCONNECT reason owed to an MQTT 5 client, if any.
    fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            End::Client { .. } | End::Lost(_) => None,
            End::Violation { reason, .. } => Some(*reason),
            End::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            End::TakenOver => Some(ReasonCode::SessionTakenOver),
            End::Shutdown => Some(ReasonCode::ServerShuttingDown),
        }
    }

    fn publishes_will(&self) -> bool {
        !matches!(self, End::Client { with_will: false })
    }
}

/// Serves one connection from its first byte to its close; `held` is dropped at the end.
///
/// The stream is not split into halves: the serve loop polls reads and writes of the one
/// stream itself, and a split would cost every connection a shared allocation.
///
/// Not an async fn: an async fn keeps each argument twice (as passed, and moved into its
/// body), and this future lives as long as the connection.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<S, H>(
    shared: Arc<Shared>,
    stream: S,
    info: ConnectionInfo,
    held: H,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Send,
{
    // Boxed: only the opening needs it, and in place it would stay in the future all along.
    let info = Box::new(info);
    // Made here and moved in whole: a value the async block moves from one local into another
    // takes space in the task twice.
    let mut io = Served {
        stream,
        // No capacity: `poll_read_some` allocates only for bytes that arrived.
        rbuf: BytesMut::new(),
        outbox: None,
        turns: Turns::new(),
    };
    async move {
        // The opening and the end are boxed: their futures are several KiB and live only for
        // a moment, while this task (and the future inlined in it) lives as long as the
        // connection. Matched in place rather than bound first: a binding would be a second
        // copy of the connection in the task.
        let opening = open(&shared, &mut io.stream, &mut io.rbuf, *info);
        let Some(mut conn) = Box::pin(opening).await else {
            return;
        };
        let mut outbox = Box::<Outbox>::default();
        conn.start(&mut outbox);
        io.outbox = Some(outbox);
        io.turns.last_seen = Instant::now();
        let end = std::future::poll_fn(|cx| conn.poll_serve(cx, &mut io)).await;
        let mut outbox = io.outbox.take().unwrap_or_default();
        Box::pin(conn.finish(end, &mut io.stream, &mut outbox)).await;
        drop(held);
    }
}

/// Reads the CONNECT and does the handshake. Returns `None` when the connection ended (and
/// was answered as it should be).
async fn open<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    info: ConnectionInfo,
) -> Option<Connection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    let connect_timeout = Duration::from_secs(shared.limits().connect_timeout_secs);
    let first = timeout(connect_timeout, read_first_packet(shared, stream, rbuf)).await;
    let connect = match first {
        Err(_) => {
            info!(%peer, "closing connection: no CONNECT within {}s", connect_timeout.as_secs());
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
                send_and_close(stream, &refusal, Protocol::V311).await;
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
    handshake(shared, connect, &info, stream).await
}

/// Reads what is available into `rbuf`; returns the number of bytes read (0 at end of stream).
///
/// Why not `read_buf` into a buffer kept per connection: tens of thousands of connections wait
/// for their next packet most of the time, and a buffer each would be most of their memory.
/// When `rbuf` is empty (no incomplete packet) the read lands in a buffer on the stack, which
/// exists only while the read is polled, and just the bytes that arrived are copied into `rbuf`;
/// its old capacity is given back first. Only an incomplete packet keeps a buffer between reads.
///
/// A poll function rather than an async fn so that the serve loop keeps no read future (and
/// no split stream) while it waits.
fn poll_read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !rbuf.is_empty() {
        if rbuf.capacity() - rbuf.len() < MIN_READ_SPACE {
            rbuf.reserve(READ_CHUNK);
        }
        return tokio_util::io::poll_read_buf(Pin::new(reader), cx, rbuf);
    }
    // Even at zero capacity an emptied buffer may still hold the allocation it was split from.
    if rbuf.capacity() > 0 {
        *rbuf = BytesMut::new();
    }
    let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut buf = ReadBuf::uninit(&mut storage);
    ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
    rbuf.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}

#[derive(Debug)]
enum FirstPacketError {
    Closed,
    Io(std::io::Error),
    Decode(DecodeError),
}

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

fn connack(reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    })
}

async fn send_and_close<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: &Packet,
    protocol: Protocol,
) {
    let mut outbox = Outbox::default();
    if outbox.push_packet(packet, protocol).is_ok() {
        let _ = timeout(CLOSE_GRACE, outbox.write_all(writer)).await;
    }
    let _ = timeout(CLOSE_GRACE, writer.shutdown()).await;
}

/// Identifiers for clients that connect with an empty one: unique in this process, and unlikely
/// to repeat across restarts.
fn assign_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "firehose-{epoch:x}-{:x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Authenticates, chooses client id, keep alive and session expiry, attaches the session and
/// writes CONNACK. Returns `None` when the connection was refused (and answered).
async fn handshake<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    connect: Connect,
    info: &ConnectionInfo,
    writer: &mut W,
) -> Option<Connection> {
    let peer = info.peer;
    let protocol = connect.protocol;
    let limits = &shared.limits();
    let refuse = |reason: ReasonCode, why: &str| {
        info!(%peer, client = %connect.client_id, "refused CONNECT: {why}");
        connack(reason)
    };
    if protocol == Protocol::V5 && connect.properties.authentication_method.is_some() {
        let packet = refuse(
            ReasonCode::BadAuthenticationMethod,
            "extended authentication is not supported",
        );
        send_and_close(writer, &packet, protocol).await;
        return None;
    }
    let verdict = match &info.authenticated_user {
        Some(user) => authenticate_by_transport(shared, user, connect.username.as_deref()),
        None => {
            shared
                .check_password(connect.username.as_deref(), connect.password.as_deref())
                .await
        }
    };
    let identity = match verdict {
        Ok(identity) => identity,
        Err(failure) => {
            let why = format!(
                "{failure} (user {:?})",
                connect.username.as_deref().unwrap_or("")
            );
            let packet = refuse(ReasonCode::BadUserNameOrPassword, &why);
            send_and_close(writer, &packet, protocol).await;
            return None;
        }
    };
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if protocol == Protocol::V311 && !connect.clean_start {
            let packet = refuse(
                ReasonCode::ClientIdentifierNotValid,
                "an empty client id needs clean session (MQTT 3.1.1 section 3.1.3.1)",
            );
            send_and_close(writer, &packet, protocol).await;
            return None;
        }
        let id = assign_client_id();
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.clone().into()
    };

    let requested_expiry = match protocol {
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        Protocol::V311 if connect.clean_start => 0,
        Protocol::V311 => u32::MAX,
    };
    let expiry = requested_expiry.min(limits.max_session_expiry_secs);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if protocol == Protocol::V5
        && limits.max_keep_alive > 0
        && (keep_alive == 0 || keep_alive > limits.max_keep_alive)
    {
        keep_alive = limits.max_keep_alive;
        server_keep_alive = Some(keep_alive);
    }

    let will = match connect.will {
        Some(will) => match publish_verdict(limits, &identity, &will.topic) {
            ReasonCode::Success => Some(Box::new(will)),
            refused => {
                debug!(%peer, client = %client_id, topic = %will.topic, reason = ?refused,
                    "will refused (access model or limits.max_topic_levels): it will never be published");
                None
            }
        },
        None => None,
    };

    let attached = shared.attach(
        &client_id,
        AttachRequest {
            clean_start: connect.clean_start,
            expiry_interval: expiry,
            protocol,
            queue_limit: usize::try_from(limits.send_queue).unwrap_or(usize::MAX),
            cursor: shared.last_event_id(),
        },
    );
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
        client = %conn.session.client_id,
        %peer,
        transport = info.transport,
        protocol = ?protocol,
        user = conn.identity.name(),
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

/// The state of one connected client.
struct Connection {
    shared: Arc<Shared>,
    session: Arc<Session>,
    generation: u64,
    protocol: Protocol,
    identity: Identity,
    peer: SocketAddr,
    /// Boxed: most clients have none, and this struct lives as long as the connection.
    will: Option<Box<Will>>,
    /// Session expiry in seconds; a v5 DISCONNECT may change it.
    expiry: u32,
    /// 1.5 times the keep alive in milliseconds, 0 when disabled (see
    /// [`Connection::keep_alive`]).
    keep_alive_ms: u32,
    /// Most unacknowledged QoS 1/2 deliveries at once.
    window: u16,
    /// The client's Maximum Packet Size.
    client_max_packet: u32,
    /// What only some connections need, made on first use ([`Connection::extra`]).
    extra: Option<Box<Extra>>,
    /// The client's Topic Alias Maximum.
    alias_out_max: u16,
    /// MQTT 5 Request Problem Information.
    problem_information: bool,
    /// The last session save requested (tickets increase by one per save).
    save_ticket: u64,
    /// QoS 2 deliveries waiting for their record to be durable before they are sent (fewer
    /// than the inflight window).
    unsaved_publishes: u32,
    /// QoS 1/2 publishes appended to the log but not yet acknowledged (reading stops at
    /// Receive Maximum).
    pending_acks: u32,
    /// Whether this client has published: only publishers are paused while most subscribers
    /// are behind (`Shared::publishers_wait`).
    publishes: bool,
    /// The cursor saved last, to save the session again only when it moved.
    saved_cursor: u64,
}

/// The state of a connection that only some clients ever need: MQTT 5 topic aliases, changes
/// of persistent sessions waiting to be durable, QoS 2 publishes not yet committed. Boxed and
/// made on first use: empty, these maps are 170 bytes, in every connection for its whole life.
#[derive(Debug, Default)]
struct Extra {
    /// Topic aliases the client set (MQTT 5).
    aliases_in: HashMap<u16, Arc<str>>,
    /// The bytes of the topic names in `aliases_in` (at most [`MAX_ALIAS_TOPIC_BYTES`]).
    alias_bytes: usize,
    /// Topic aliases we set towards the client (MQTT 5).
    aliases_out: HashMap<Arc<str>, u16>,
    /// SUBACK/UNSUBACK of a persistent session held until the save that records the change is
    /// durable, with the retained messages to send after a SUBACK.
    deferred: VecDeque<(u64, Packet, Vec<Delivery>)>,
    /// QoS 2 packet ids appended but not yet committed (a DUP resend waits for the first).
    uncommitted_qos2: HashSet<u16>,
    /// Where the log tells this connection that its publishes and session saves are durable.
    /// Made on first use ([`Connection::events_sender`]): an unbounded channel allocates a
    /// block up front, and a connection that only subscribes never needs one.
    events_tx: Option<mpsc::UnboundedSender<ConnEvent>>,
    /// The receiving end of a channel just made, until the serve loop takes it.
    new_events: Option<mpsc::UnboundedReceiver<ConnEvent>>,
    /// The topic of the last PUBLISH (without alias), shared with the messages made of it,
    /// and its [`publish_verdict`].
    last_topic: Option<(Arc<str>, ReasonCode)>,
}

/// What the log tells a connection (a save from the writer thread, a stored publish from the
/// routing task).
#[derive(Debug)]
enum ConnEvent {
    /// A publish was committed (or failed).
    Accepted(AcceptedPublish),
    /// The session save with this ticket is durable.
    Saved(u64),
}

/// A publish of this connection that the log committed (or failed to).
#[derive(Debug)]
struct AcceptedPublish {
    packet_id: u16,
    qos: QoS,
    stored: bool,
}

/// Most events one catch-up read returns, and most rows it examines.
const CATCHUP_BATCH: usize = 1000;
const CATCHUP_SCAN: usize = 20_000;
/// Stop reading from clients while this many accepted messages wait for the log writer or the
/// routing task: four of the writer's largest batches, so it always has a full one waiting,
/// while the messages held in memory stay few.
const MAX_STORE_BACKLOG: usize = 16_384;
/// How often a connected persistent session saves its cursor when it moved.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

impl Connection {
    fn is_v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// 1.5 times the keep alive, `None` when disabled.
    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(u64::from(self.keep_alive_ms)))
    }

    /// Whether an encoded packet of `len` bytes exceeds the client's Maximum Packet Size.
    fn too_large_for_client(&self, len: usize) -> bool {
        u32::try_from(len).map_or(true, |len| len > self.client_max_packet)
    }

    /// Resends what the resumed session left unacknowledged, DUP set, in the original order.
    fn start(&mut self, outbox: &mut Outbox) {
        let pending = self.session.lock().inflight_in_order();
        let now = std::time::Instant::now();
        for (id, inflight) in pending {
            // A previous connection's unsaved stages were either saved by now or lost with it:
            // resend as if they had been sent.
            let result = match inflight.stage {
                Stage::AwaitPubAck | Stage::AwaitPubRec | Stage::PublishUnsaved { .. } => self
                    .write_publish(&inflight.delivery, Some(id), true, now, outbox)
                    .map(|_| ()),
                Stage::AwaitPubComp | Stage::ReleaseUnsaved { .. } => self.push(
                    outbox,
                    &pub_response(Packet::PubRel, id, ReasonCode::Success),
                ),
            };
            let settled = match inflight.stage {
                Stage::PublishUnsaved { .. } => Some(Stage::AwaitPubRec),
                Stage::ReleaseUnsaved { .. } => Some(Stage::AwaitPubComp),
                _ => None,
            };
            if let Some(stage) = settled {
                if let Some(f) = self.session.lock().inflight.get_mut(&id) {
                    f.stage = stage;
                }
            }
            if let Err(error) = result {
                warn!(client = %self.session.client_id, "cannot resend message {id}: {error}");
            }
        }
    }

    /// The connected loop, one call per wake of the task: reads and handles packets, moves
    /// queued deliveries into the outbox and writes them, until the connection ends.
    ///
    /// Why a poll function instead of an async loop over `select!`: every connection spends
    /// most of its life waiting here, and whatever the wait keeps is memory of every idle
    /// connection. Polling the stream, the channel, the catch-up read and the session's link
    /// directly keeps nothing but [`Turns`] and the one timer, both owned by the caller; an
    /// async loop kept a future per branch, or at least a `Notified` per notification. The
    /// order of [`poll_step`] is the priority of the branches.
    fn poll_serve<S>(&mut self, cx: &mut Context<'_>, served: &mut Served<S>) -> Poll<End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Served {
            stream,
            rbuf,
            outbox: outbox_slot,
            turns,
        } = served;
        loop {
            if turns.paused {
                // Nothing is polled meanwhile; what became ready is found afterwards.
                ready!(turns.poll_timer(cx));
                turns.paused = false;
            }
            // Before draining: an event committed while this task waited its turn joins the
            // queue, to be written with what is already there.
            self.shared.route_waiting();
            let outbox = outbox_slot.get_or_insert_with(Box::default);
            self.drain(outbox);
            if turns.catchup.is_none() {
                turns.catchup = self.start_catchup();
            }
            let store_busy = self.shared.delivery_backlog() >= MAX_STORE_BACKLOG
                || (self.publishes && self.shared.publishers_wait());
            let read_open = outbox.pending_bytes() < WRITE_HIGH_WATER
                && self.pending_acks < u32::from(self.shared.limits().receive_maximum)
                && !store_busy;
            // After everything above that may have made the channel (drain saves sessions).
            if let Some(receiver) = self.extra.as_mut().and_then(|e| e.new_events.take()) {
                turns.events = Some(receiver);
            }
            // One timer serves the keep alive, the periodic save and the pause while the store
            // is busy: each timer is space in every connection's task.
            let deadline = self.keep_alive().map(|ka| turns.last_seen + ka);
            let saves = self.expiry > 0;
            let busy_until = store_busy.then(|| Instant::now() + Duration::from_millis(5));
            let wake_at = [deadline, saves.then_some(turns.next_save), busy_until]
                .into_iter()
                .flatten()
                .min();
            if let Some(at) = wake_at {
                turns.set_timer(at);
            }
            let open = Open {
                read: read_open,
                timer: wake_at.is_some(),
            };
            let signals = Signals {
                session: &self.session,
                generation: self.generation,
                shared: &self.shared,
            };
            let io = Io {
                stream: &mut *stream,
                rbuf: &mut *rbuf,
                outbox: &mut *outbox,
            };
            let Poll::Ready(step) = poll_step(cx, open, signals, io, turns) else {
                if outbox_slot.as_ref().is_some_and(|o| o.is_empty()) {
                    // Caught up and written: the connection waits with no write queue.
                    *outbox_slot = None;
                }
                return Poll::Pending;
            };
            match step {
                Step::Kicked => return Poll::Ready(End::TakenOver),
                Step::ShuttingDown => return Poll::Ready(End::Shutdown),
                Step::Written(Ok(n)) => stats::add(&self.shared.stats().bytes_sent, n as u64),
                Step::Written(Err(error)) => {
                    return Poll::Ready(End::Lost(format!("write failed: {error}")))
                }
                Step::Event(event) => {
                    // All that is there, so that the acknowledgements leave in one write.
                    let mut next = Some(event);
                    while let Some(event) = next {
                        if let Some(end) = self.on_event(event, outbox) {
                            return Poll::Ready(end);
                        }
                        next = turns.events.as_mut().and_then(|rx| rx.try_recv().ok());
                    }
                }
                Step::CaughtUp(page) => {
                    let from = turns.catchup.take().map_or(0, |c| c.from);
                    match page {
                        Ok(Ok(page)) => self.apply_catchup(from, page),
                        Ok(Err(error)) => {
                            warn!(client = %self.session.client_id, "cannot read the log to catch up: {error}");
                            turns.set_timer(Instant::now() + Duration::from_secs(1));
                            turns.paused = true;
                        }
                        Err(error) => {
                            warn!(client = %self.session.client_id, "catch-up read failed: {error}")
                        }
                    }
                }
                Step::Read(Ok(0)) => {
                    return Poll::Ready(End::Lost("connection closed without DISCONNECT".into()))
                }
                Step::Read(Ok(n)) => {
                    stats::add(&self.shared.stats().bytes_received, n as u64);
                    turns.last_seen = Instant::now();
                    if let Some(end) = self.process(rbuf, outbox) {
                        return Poll::Ready(end);
                    }
                }
                Step::Read(Err(error)) => {
                    return Poll::Ready(End::Lost(format!("read failed: {error}")))
                }
                // The queue is drained at the top of every turn.
                Step::Woken => {}
                Step::Timer => {
                    let now = Instant::now();
                    if saves && now >= turns.next_save {
                        self.save_if_moved();
                        turns.next_save = now + SAVE_INTERVAL;
                    }
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        return Poll::Ready(End::KeepAliveTimeout);
                    }
                }
            }
        }
    }

    /// Handles what the log's writer (or the routing task) told this connection.
    fn on_event(&mut self, event: ConnEvent, outbox: &mut Outbox) -> Option<End> {
        match event {
            ConnEvent::Accepted(done) => self.on_accepted(done, outbox),
            ConnEvent::Saved(ticket) => {
                self.on_saved(ticket, outbox);
                None
            }
        }
    }

    /// The state only some connections need, made on first use.
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// `topic` as a shared string, and its [`publish_verdict`]: the last publish's
    /// when it is the same. A publisher mostly publishes to one topic or a few, and
    /// a copy and an ACL walk per message were an allocation and a trie walk per message.
    fn shared_topic(&mut self, topic: &str) -> (Arc<str>, ReasonCode) {
        if let Some((last, verdict)) = self.extra.as_ref().and_then(|e| e.last_topic.as_ref()) {
            if **last == *topic {
                return (last.clone(), *verdict);
            }
        }
        let shared: Arc<str> = Arc::from(topic);
        let verdict = publish_verdict(self.shared.limits(), &self.identity, topic);
        self.extra().last_topic = Some((shared.clone(), verdict));
        (shared, verdict)
    }

    /// A sender for this connection's events, making the channel on first use.
    fn events_sender(&mut self) -> mpsc::UnboundedSender<ConnEvent> {
        let extra = self.extra();
        if let Some(tx) = &extra.events_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        extra.events_tx = Some(tx.clone());
        extra.new_events = Some(rx);
        tx
    }

    /// Saves a persistent session when its acknowledged cursor moved.
    fn save_if_moved(&mut self) {
        let cursor = {
            let state = self.session.lock();
            if state.expiry_interval == 0 {
                return;
            }
            state.acknowledged_cursor()
        };
        if cursor != self.saved_cursor {
            self.saved_cursor = cursor;
            self.shared.save_session(&self.session, true, None);
        }
    }

    /// Whether changes to this session must be durable before the client is told about them.
    fn is_persistent(&self) -> bool {
        self.session.lock().expiry_interval > 0
    }

    /// Saves the session; `ConnEvent::Saved(ticket)` arrives once it is durable.
    fn request_save(&mut self) -> u64 {
        self.save_ticket += 1;
        let ticket = self.save_ticket;
        let tx = self.events_sender();
        self.shared.save_session(
            &self.session,
            true,
            Some(Box::new(move || {
                let _ = tx.send(ConnEvent::Saved(ticket));
            })),
        );
        ticket
    }

    /// The oldest SUBACK/UNSUBACK (with its retained messages) that waited for a save up to
    /// `ticket`, if any.
    fn pop_deferred(&mut self, ticket: u64) -> Option<(Packet, Vec<Delivery>)> {
        let deferred = &mut self.extra.as_mut()?.deferred;
        if deferred.front()?.0 > ticket {
            return None;
        }
        deferred
            .pop_front()
            .map(|(_, ack, retained)| (ack, retained))
    }

    /// Sends what waited for the session save `ticket`: SUBACK/UNSUBACK (and retained messages),
    /// QoS 2 PUBLISH and PUBREL packets.
    fn on_saved(&mut self, ticket: u64, outbox: &mut Outbox) {
        while let Some((ack, retained)) = self.pop_deferred(ticket) {
            self.push_or_log(outbox, &ack);
            for delivery in retained {
                self.session.enqueue_direct(delivery, self.shared.stats());
            }
        }
        let ready: Vec<(u16, Inflight)> = self
            .session
            .lock()
            .inflight_in_order()
            .into_iter()
            .filter(|(_, f)| match f.stage {
                Stage::PublishUnsaved { ticket: t } | Stage::ReleaseUnsaved { ticket: t } => {
                    t <= ticket
                }
                _ => false,
            })
            .collect();
        let now = std::time::Instant::now();
        for (id, inflight) in ready {
            let next = match inflight.stage {
                Stage::PublishUnsaved { .. } => {
                    self.unsaved_publishes = self.unsaved_publishes.saturating_sub(1);
                    match self.write_publish(&inflight.delivery, Some(id), false, now, outbox) {
                        Ok(true) => stats::add(&self.shared.stats().messages_sent, 1),
                        Ok(false) => stats::add(&self.shared.stats().dropped_too_large, 1),
                        Err(error) => {
                            warn!(client = %self.session.client_id, "cannot encode PUBLISH: {error}")
                        }
                    }
                    Stage::AwaitPubRec
                }
                _ => {
                    self.push_or_log(
                        outbox,
                        &pub_response(Packet::PubRel, id, ReasonCode::Success),
                    );
                    Stage::AwaitPubComp
                }
            };
            if let Some(f) = self.session.lock().inflight.get_mut(&id) {
                f.stage = next;
            }
        }
    }

    /// Starts reading from the log when the session is lagging and its queue has room.
    fn start_catchup(&self) -> Option<CatchUp> {
        let (from, filters) = {
            let mut state = self.session.lock();
            if !state.lagging || state.queue.len() > self.session.queue_limit() / 2 {
                return None;
            }
            let filters: Vec<String> = state
                .subscriptions
                .keys()
                .filter(|f| parse_filter(f).group.is_none())
                .cloned()
                .collect();
            let only_qos0 = state
                .subscriptions
                .values()
                .all(|o| o.qos == QoS::AtMostOnce);
            if filters.is_empty() || only_qos0 {
                // Nothing to read (catch-up replays QoS >= 1 only): back to live routing from
                // the current position.
                state.cursor = state.cursor.max(self.shared.log_position());
                state.lagging = false;
                return None;
            }
            (state.cursor, filters)
        };
        let read = self
            .shared
            .read_log_after(from, filters, CATCHUP_BATCH, CATCHUP_SCAN);
        Some(CatchUp { from, read })
    }

    /// Queues what a catch-up read found, in log order, and returns the session to live routing
    /// once it has reached the event being routed.
    fn apply_catchup(&mut self, from: u64, page: Page) {
        let stats = self.shared.stats();
        let mut state = self.session.lock();
        if state.cursor != from || !state.lagging {
            return; // a takeover or clean start moved the session meanwhile
        }
        let limit = self.session.queue_limit();
        let mut full = false;
        let mut delivered = 0;
        for event in &page.events {
            if event.id <= state.cursor {
                continue;
            }
            if state.queue.len() >= limit {
                full = true;
                break;
            }
            let already_inflight = state.delivered_ahead.contains(event.id)
                || state
                    .inflight
                    .values()
                    .any(|f| f.delivery.from_log && f.delivery.message.id == event.id);
            if !already_inflight && self.identity.may_receive(&event.event.topic) {
                let message = Arc::new(Message::from_event(event));
                match delivery_for(&state.subscriptions, message) {
                    Some(d) if d.qos == QoS::AtMostOnce => {
                        stats::add(&stats.skipped_qos0_catchup, 1)
                    }
                    Some(d) => {
                        state.queue.push_back(d);
                        delivered += 1;
                    }
                    None => {}
                }
            }
            state.cursor = event.id;
        }
        if !full {
            state.cursor = state.cursor.max(page.scanned_to);
        }
        let cursor = state.cursor;
        state.delivered_ahead.forget_up_to(cursor);
        if !full && !page.more && state.cursor >= self.shared.log_position() {
            state.lagging = false;
        }
        drop(state);
        stats::add(&stats.catchup_delivered, delivered);
    }

    /// Acknowledges a publish once the log has it.
    fn on_accepted(&mut self, done: AcceptedPublish, outbox: &mut Outbox) -> Option<End> {
        self.pending_acks = self.pending_acks.saturating_sub(1);
        let id = done.packet_id;
        if done.qos == QoS::ExactlyOnce {
            if let Some(extra) = self.extra.as_mut() {
                extra.uncommitted_qos2.remove(&id);
            }
        }
        if !done.stored {
            if !self.is_v5() {
                // 3.1.1 has no negative acknowledgement: close so the client publishes again.
                return Some(End::Lost("the event log could not store a publish".into()));
            }
            let mut ack = PubResponse {
                packet_id: id,
                reason: ReasonCode::UnspecifiedError,
                properties: AckProperties::default(),
            };
            if self.problem_information {
                ack.properties.reason_string = Some("the event log could not store it".into());
            }
            let packet = if done.qos == QoS::AtLeastOnce {
                Packet::PubAck(ack)
            } else {
                Packet::PubRec(ack)
            };
            self.push_or_log(outbox, &packet);
            return None;
        }
        if done.qos == QoS::ExactlyOnce {
            self.session.lock().incoming_qos2.insert(id);
            self.push_or_log(
                outbox,
                &pub_response(Packet::PubRec, id, ReasonCode::Success),
            );
        } else {
            self.push_or_log(
                outbox,
                &pub_response(Packet::PubAck, id, ReasonCode::Success),
            );
        }
        None
    }

    /// Decodes and handles every complete packet in `rbuf`.
    fn process(&mut self, rbuf: &mut BytesMut, outbox: &mut Outbox) -> Option<End> {
        let max = self.shared.limits().max_packet_size as usize;
        let mut publishes = 0;
        let mut read = ReadBatch::default();
        let end = loop {
            match decode(rbuf, self.protocol, max) {
                Ok(Some(packet)) => {
                    if matches!(packet, Packet::Publish(_)) {
                        publishes += 1;
                    } else {
                        // Whatever else the packet asks of the log comes after the publishes
                        // before it.
                        self.hand_over(&mut read);
                    }
                    if let Some(end) = self.handle(packet, &mut read, outbox) {
                        break Some(end);
                    }
                }
                Ok(None) => break None,
                Err(error) => break Some(End::from_decode(error)),
            }
        };
        self.hand_over(&mut read);
        stats::add(&self.shared.stats().messages_received, publishes);
        end
    }

    /// Hands the publishes accepted so far in this read to the log, in one send (none when
    /// there are none: `accept_all` sees to that).
    fn hand_over(&self, read: &mut ReadBatch) {
        self.shared
            .accept_all(std::mem::take(&mut read.publications));
    }

    fn push(&self, outbox: &mut Outbox, packet: &Packet) -> Result<(), EncodeError> {
        outbox.push_packet(packet, self.protocol).map(|_| ())
    }

    fn push_or_log(&self, outbox: &mut Outbox, packet: &Packet) {
        if let Err(error) = self.push(outbox, packet) {
            warn!(client = %self.session.client_id, "cannot encode {}: {error}", packet.name());
        }
    }

    /// Handles one packet of a read; `read` holds what the read's packets share (its time,
    /// the publishes not yet handed to the log).
    fn handle(&mut self, packet: Packet, read: &mut ReadBatch, outbox: &mut Outbox) -> Option<End> {
        match packet {
            Packet::Publish(publish) => {
                return self.on_publish(publish, read, outbox);
            }
            Packet::PubAck(ack) => {
                let mut state = self.session.lock();
                if let Entry::Occupied(entry) = state.inflight.entry(ack.packet_id) {
                    if entry.get().stage == Stage::AwaitPubAck {
                        entry.remove();
                    }
                }
            }
            Packet::PubRec(rec) => {
                let persistent = self.is_persistent();
                let next_ticket = self.save_ticket + 1;
                let mut save = false;
                let mut state = self.session.lock();
                let reply = match state.inflight.get_mut(&rec.packet_id) {
                    Some(f) if f.stage == Stage::AwaitPubRec => {
                        if rec.reason.is_error() {
                            state.inflight.remove(&rec.packet_id);
                            None
                        } else if persistent && f.delivery.from_log {
                            // PUBREL leaves once the store knows the client has the message.
                            f.stage = Stage::ReleaseUnsaved {
                                ticket: next_ticket,
                            };
                            save = true;
                            None
                        } else {
                            f.stage = Stage::AwaitPubComp;
                            Some(ReasonCode::Success)
                        }
                    }
                    Some(f) if matches!(f.stage, Stage::ReleaseUnsaved { .. }) => None,
                    Some(f) if f.stage == Stage::AwaitPubComp => Some(ReasonCode::Success),
                    _ => Some(ReasonCode::PacketIdentifierNotFound),
                };
                drop(state);
                if save {
                    self.request_save();
                }
                if let Some(reason) = reply {
                    self.push_or_log(outbox, &pub_response(Packet::PubRel, rec.packet_id, reason));
                }
            }
            Packet::PubRel(rel) => {
                let found = self.session.lock().incoming_qos2.remove(&rel.packet_id);
                let reason = if found {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.push_or_log(
                    outbox,
                    &pub_response(Packet::PubComp, rel.packet_id, reason),
                );
            }
            Packet::PubComp(comp) => {
                let mut state = self.session.lock();
                if state
                    .inflight
                    .get(&comp.packet_id)
                    .is_some_and(|f| f.stage == Stage::AwaitPubComp)
                {
                    state.inflight.remove(&comp.packet_id);
                }
            }
            Packet::Subscribe(subscribe) => return self.on_subscribe(subscribe, outbox),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, outbox),
            Packet::PingReq => self.push_or_log(outbox, &Packet::PingResp),
            Packet::Disconnect(disconnect) => return Some(self.on_disconnect(disconnect)),
            Packet::Connect(_) => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    "second CONNECT on one connection",
                ))
            }
            Packet::Auth(_) => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    "AUTH without an authentication method in CONNECT",
                ))
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    format!("{} is sent by servers, not clients", other.name()),
                ))
            }
        }
        None
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        read: &mut ReadBatch,
        outbox: &mut Outbox,
    ) -> Option<End> {
        self.publishes = true;
        let (topic, verdict) = match publish.properties.topic_alias.filter(|_| self.is_v5()) {
            Some(alias) => {
                let max = self.shared.limits().topic_alias_maximum;
                if alias == 0 || alias > max {
                    return Some(End::violation(
                        ReasonCode::TopicAliasInvalid,
                        format!("PUBLISH: topic alias {alias} outside 1..={max}"),
                    ));
                }
                let topic = if publish.topic.is_empty() {
                    match self.extra.as_ref().and_then(|e| e.aliases_in.get(&alias)) {
                        Some(topic) => topic.clone(),
                        None => {
                            return Some(End::violation(
                                ReasonCode::ProtocolError,
                                format!("PUBLISH: topic alias {alias} was never set"),
                            ))
                        }
                    }
                } else {
                    let topic: Arc<str> = publish.topic.as_str().into();
                    let extra = self.extra();
                    extra.alias_bytes += topic.len();
                    if let Some(replaced) = extra.aliases_in.insert(alias, topic.clone()) {
                        extra.alias_bytes -= replaced.len();
                    }
                    if extra.alias_bytes > MAX_ALIAS_TOPIC_BYTES {
                        return Some(End::violation(
                            ReasonCode::QuotaExceeded,
                            format!(
                                "PUBLISH: topic aliases would hold more than {} KiB of topic names",
                                MAX_ALIAS_TOPIC_BYTES / 1024
                            ),
                        ));
                    }
                    topic
                };
                let verdict = publish_verdict(self.shared.limits(), &self.identity, &topic);
                (topic, verdict)
            }
            None if publish.topic.is_empty() => {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    "PUBLISH: empty topic name without a topic alias",
                ))
            }
            None => self.shared_topic(&publish.topic),
        };
        let id = publish.packet_id.unwrap_or(0);
        if publish.qos == QoS::ExactlyOnce {
            let uncommitted = self.extra.as_ref().map(|e| &e.uncommitted_qos2);
            if uncommitted.is_some_and(|ids| ids.contains(&id)) {
                return None; // its PUBREC follows when the first copy is durable
            }
            let state = self.session.lock();
            if state.incoming_qos2.contains(&id) {
                drop(state);
                self.push_or_log(
                    outbox,
                    &pub_response(Packet::PubRec, id, ReasonCode::Success),
                );
                return None;
            }
            let unreleased = state.incoming_qos2.len() + uncommitted.map_or(0, HashSet::len);
            if unreleased >= usize::from(self.shared.limits().receive_maximum) {
                return Some(End::violation(
                    ReasonCode::ReceiveMaximumExceeded,
                    format!(
                        "more than {} unreleased QoS 2 publishes",
                        self.shared.limits().receive_maximum
                    ),
                ));
            }
        }
        let mut reason = verdict;
        if reason == ReasonCode::NotAuthorized {
            stats::add(&self.shared.stats().publish_denied, 1);
            debug!(client = %self.session.client_id, user = self.identity.name(), %topic,
                "PUBLISH refused by the access model");
        } else if reason == ReasonCode::TopicNameInvalid {
            stats::add(&self.shared.stats().publish_over_limits, 1);
            debug!(client = %self.session.client_id, user = self.identity.name(),
                "PUBLISH refused: its topic has more than limits.max_topic_levels levels");
        } else if self.is_v5()
            && publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            reason = ReasonCode::PayloadFormatInvalid;
        }
        let mut claim = None;
        let mut quota_full = None;
        if reason == ReasonCode::Success && publish.retain {
            match self.shared.claim_retained(&topic, publish.payload.len()) {
                Ok(claimed) => claim = claimed,
                Err(full) => {
                    debug!(client = %self.session.client_id, %topic, "PUBLISH refused: {full}");
                    quota_full = Some(full);
                    reason = ReasonCode::QuotaExceeded;
                }
            }
        }
        if reason == ReasonCode::Success {
            let message = Message::new(
                0,
                topic,
                publish.payload,
                publish.qos,
                publish.retain,
                publish.properties,
                self.session.client_id.clone(),
            );
            let done: Option<Accepted> = match publish.qos {
                QoS::AtMostOnce => None,
                qos => {
                    self.pending_acks += 1;
                    if qos == QoS::ExactlyOnce {
                        self.extra().uncommitted_qos2.insert(id);
                    }
                    let tx = self.events_sender();
                    Some(Box::new(move |event_id| {
                        let _ = tx.send(ConnEvent::Accepted(AcceptedPublish {
                            packet_id: id,
                            qos,
                            stored: event_id.is_some(),
                        }));
                    }))
                }
            };
            let publisher = self.identity.shared_name();
            let received_ms = *read.received_ms.get_or_insert_with(now_ms);
            read.publications
                .push(message, publisher, received_ms, done, claim);
            return None;
        }
        // Refused. MQTT 3.1.1 has no negative acknowledgement: the message is acknowledged and
        // dropped, as Mosquitto does.
        let ack_reason = if self.is_v5() {
            reason
        } else {
            ReasonCode::Success
        };
        let explain = |kind: fn(PubResponse) -> Packet| {
            let mut packet = pub_response(kind, id, ack_reason);
            if let (Packet::PubAck(r) | Packet::PubRec(r), true) = (
                &mut packet,
                self.problem_information && ack_reason.is_error(),
            ) {
                r.properties.reason_string = Some(match ack_reason {
                    ReasonCode::NotAuthorized => {
                        format!("{} may not publish to {topic}", self.identity.name())
                    }
                    ReasonCode::TopicNameInvalid => format!(
                        "the topic has more than {} levels (limits.max_topic_levels)",
                        self.shared.limits().max_topic_levels
                    ),
                    ReasonCode::QuotaExceeded => {
                        quota_full.map(|full| full.to_string()).unwrap_or_default()
                    }
                    _ => "payload is not valid UTF-8 but its format indicator says so".into(),
                });
            }
            packet
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = explain(Packet::PubAck);
                self.push_or_log(outbox, &ack);
            }
            QoS::ExactlyOnce => {
                if !ack_reason.is_error() {
                    self.session.lock().incoming_qos2.insert(id);
                }
                let rec = explain(Packet::PubRec);
                self.push_or_log(outbox, &rec);
            }
        }
        None
    }

    fn on_subscribe(&mut self, subscribe: Subscribe, outbox: &mut Outbox) -> Option<End> {
        let limit = self.shared.limits().max_subscriptions_per_client;
        let mut reasons = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained = Vec::new();
        for sub in &subscribe.subscriptions {
            let parsed = parse_filter(&sub.filter);
            if self.is_v5() && parsed.group.is_some() && sub.options.no_local {
                return Some(End::violation(
                    ReasonCode::ProtocolError,
                    format!(
                        "SUBSCRIBE: No Local set on shared subscription {:?}",
                        sub.filter
                    ),
                ));
            }
            if !self.identity.may_subscribe(&sub.filter) {
                debug!(client = %self.session.client_id, filter = %sub.filter, "SUBSCRIBE refused by the access model");
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            if let Some(levels) = self.shared.limits().topic_too_deep(parsed.filter) {
                debug!(client = %self.session.client_id, levels,
                    "SUBSCRIBE refused: the filter has more than limits.max_topic_levels levels");
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let count = {
                let state = self.session.lock();
                if state.subscriptions.contains_key(&sub.filter) {
                    0
                } else {
                    state.subscriptions.len() as u64
                }
            };
            if count >= limit {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let v5 = self.is_v5();
            let options = SubOptions {
                qos: sub.options.qos,
                no_local: v5 && sub.options.no_local,
                retain_as_published: v5 && sub.options.retain_as_published,
                id: subscribe.subscription_identifier.filter(|_| v5),
            };
            let existed = self.shared.subscribe(&self.session, &sub.filter, options);
            self.session
                .lock()
                .subscriptions
                .insert(sub.filter.clone(), options);
            let send_retained = parsed.group.is_none()
                && match sub.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in self.shared.retained_matching(parsed.filter) {
                    retained.push(Delivery {
                        qos: options.qos.min(message.qos),
                        retain: true,
                        subscription_ids: options.id.into_iter().collect(),
                        from_log: false,
                        message,
                    });
                }
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
        }
        let ack = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        });
        self.acknowledge_change(ack, retained, outbox);
        None
    }

    /// Sends a SUBACK or UNSUBACK (then the retained messages a SUBACK brings). For a
    /// persistent session it waits until the changed session is durable, so that a client told
    /// "subscribed" keeps its subscription across a crash.
    fn acknowledge_change(&mut self, ack: Packet, retained: Vec<Delivery>, outbox: &mut Outbox) {
        if self.is_persistent() {
            let ticket = self.request_save();
            self.extra().deferred.push_back((ticket, ack, retained));
            return;
        }
        self.shared.save_session(&self.session, true, None);
        self.push_or_log(outbox, &ack);
        for delivery in retained {
            self.session.enqueue_direct(delivery, self.shared.stats());
        }
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, outbox: &mut Outbox) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = self.shared.unsubscribe(&self.session, filter);
            self.session.lock().subscriptions.remove(filter);
            reasons.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        });
        self.acknowledge_change(ack, Vec::new(), outbox);
    }

    fn on_disconnect(&mut self, disconnect: Disconnect) -> End {
        if let Some(expiry) = disconnect
            .properties
            .session_expiry_interval
            .filter(|_| self.is_v5())
        {
            if self.expiry == 0 && expiry != 0 {
                // MQTT 5 section 3.14.2.2.2.
                return End::violation(
                    ReasonCode::ProtocolError,
                    "DISCONNECT: session expiry set after connecting with 0",
                );
            }
            self.expiry = expiry.min(self.shared.limits().max_session_expiry_secs);
            self.session.lock().expiry_interval = self.expiry;
        }
        End::Client {
            with_will: disconnect.reason == ReasonCode::DisconnectWithWill,
        }
    }

    /// Moves queued deliveries into the outbox, within the inflight window and the outbox's
    /// high-water mark.
    fn drain(&mut self, outbox: &mut Outbox) {
        let session = self.session.clone();
        let mut state = session.lock();
        if state.queue.is_empty() {
            // Most turns of a publisher's loop: nothing to send, and no clock to read.
            return;
        }
        let now = std::time::Instant::now();
        let mut sent = 0;
        let next_ticket = self.save_ticket + 1;
        let mut save = false;
        let persistent = state.expiry_interval > 0;
        while outbox.pending_bytes() < WRITE_HIGH_WATER {
            let Some(front) = state.queue.front() else {
                break;
            };
            // Nothing overtakes a QoS 2 message waiting for its record to be durable.
            let qos2_run = front.qos == QoS::ExactlyOnce && front.from_log && persistent;
            if self.unsaved_publishes > 0 && !(save && qos2_run) {
                break;
            }
            if front.qos != QoS::AtMostOnce && state.inflight.len() >= usize::from(self.window) {
                break;
            }
            let Some(delivery) = state.queue.pop_front() else {
                break;
            };
            state.last_progress = now;
            if delivery.message.is_expired(now) {
                stats::add(&self.shared.stats().dropped_expired, 1);
                continue;
            }
            let id = (delivery.qos != QoS::AtMostOnce).then(|| state.allocate_packet_id());
            if let (Some(id), QoS::ExactlyOnce, true, true) =
                (id, delivery.qos, persistent, delivery.from_log)
            {
                // Recorded before it is sent, so that after a crash it is resent with the same
                // packet id instead of as a new message.
                let stage = Stage::PublishUnsaved {
                    ticket: next_ticket,
                };
                state.add_inflight(id, delivery, stage);
                self.unsaved_publishes += 1;
                save = true;
                continue;
            }
            match self.write_publish(&delivery, id, false, now, outbox) {
                Ok(true) => {
                    sent += 1;
                    if let Some(id) = id {
                        let stage = if delivery.qos == QoS::AtLeastOnce {
                            Stage::AwaitPubAck
                        } else {
                            Stage::AwaitPubRec
                        };
                        state.add_inflight(id, delivery, stage);
                    }
                }
                Ok(false) => stats::add(&self.shared.stats().dropped_too_large, 1),
                Err(error) => {
                    warn!(client = %self.session.client_id, topic = %delivery.message.topic,
                        "cannot encode PUBLISH: {error}");
                }
            }
        }
        if state.queue.is_empty() && state.queue.capacity() > 1024 {
            // A burst is over: give its memory back.
            state.queue.shrink_to(64);
        }
        drop(state);
        stats::add(&self.shared.stats().messages_sent, sent);
        if save {
            self.request_save();
        }
    }

    /// Queues one PUBLISH; `Ok(false)` when it exceeds the client's Maximum Packet Size and
    /// was skipped (MQTT 5 section 3.1.2.11.4: as if delivered).
    fn write_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: std::time::Instant,
        outbox: &mut Outbox,
    ) -> Result<bool, EncodeError> {
        let message = &delivery.message;
        let per_delivery = dup
            || (self.is_v5()
                && (!delivery.subscription_ids.is_empty()
                    || message.expires_at.is_some()
                    || self.alias_out_max > 0));
        if !per_delivery {
            let variant = Variant {
                protocol: self.protocol,
                qos: delivery.qos,
                retain: delivery.retain,
            };
            let parts = message.shared_parts(variant)?;
            if self.too_large_for_client(parts.len(packet_id.is_some())) {
                return Ok(false);
            }
            outbox.push_shared(message, variant, packet_id)?;
            return Ok(true);
        }
        let mut publish = message.to_publish(delivery.qos, delivery.retain);
        publish.dup = dup;
        publish.packet_id = packet_id;
        let mut new_alias = None;
        if self.is_v5() {
            publish.properties.subscription_identifiers = delivery.subscription_ids.clone();
            publish.properties.message_expiry_interval = message.remaining_expiry(now);
            if self.alias_out_max > 0 {
                let aliases = self.extra.as_ref().map(|e| &e.aliases_out);
                let set = aliases.map_or(0, HashMap::len);
                if let Some(alias) = aliases.and_then(|a| a.get(&message.topic)) {
                    publish.properties.topic_alias = Some(*alias);
                    publish.topic.clear();
                } else if set < usize::from(self.alias_out_max) {
                    let alias = set as u16 + 1;
                    publish.properties.topic_alias = Some(alias);
                    new_alias = Some(alias);
                }
            }
        }
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish), self.protocol, &mut buf)?;
        if self.too_large_for_client(buf.len()) {
            return Ok(false);
        }
        if let Some(alias) = new_alias {
            self.extra()
                .aliases_out
                .insert(message.topic.clone(), alias);
        }
        outbox.push(buf.freeze());
        Ok(true)
    }

    /// Sends what the end owes the client, closes, then settles the will and the session.
    async fn finish<W: AsyncWrite + Unpin>(self, end: End, writer: &mut W, outbox: &mut Outbox) {
        let shared = &self.shared;
        // The session first, so that a client reconnecting as soon as it sees the close finds
        // it settled. A takeover leaves it to the new connection.
        let mut expiry = None;
        {
            let mut state = self.session.lock();
            if state.generation == self.generation && !state.ended {
                state.link = None;
                state.lagging = true;
                self.session.set_online(false);
                expiry = Some(state.expiry_interval);
            }
        }
        match expiry {
            Some(0) => {
                shared.end_session(&self.session, self.generation);
            }
            Some(secs) => {
                // Durable before the socket closes: a client that saw the close may rely on
                // the session's disconnect time (its expiry) even if the broker crashes next.
                save_and_wait(shared, &self.session, false).await;
                if secs != u32::MAX {
                    shared.schedule_expiry(self.session.clone(), self.generation, secs.into());
                }
            }
            None => {}
        }

        if let Some(reason) = end.disconnect_reason().filter(|_| self.is_v5()) {
            let reason_string = match &end {
                End::Violation { message, .. } if self.problem_information => Some(message.clone()),
                _ => None,
            };
            let packet = Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties {
                    reason_string,
                    ..DisconnectProperties::default()
                },
            });
            self.push_or_log(outbox, &packet);
        }
        if let Ok(Ok(())) = timeout(CLOSE_GRACE, outbox.write_all(writer)).await {
            let _ = timeout(CLOSE_GRACE, writer.shutdown()).await;
        }
        shared
            .stats()
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
        match &end {
            End::Client { .. } => {
                debug!(client = %self.session.client_id, peer = %self.peer, "client disconnected")
            }
            End::Lost(why) => {
                info!(client = %self.session.client_id, peer = %self.peer, "connection lost: {why}")
            }
            End::Violation { message, reason } => {
                stats::add(&shared.stats().protocol_errors, 1);
                info!(client = %self.session.client_id, peer = %self.peer,
                    "closing connection: {message} (reason 0x{:02X})", reason.as_u8());
            }
            End::KeepAliveTimeout => info!(client = %self.session.client_id, peer = %self.peer,
                "closing connection: keep alive expired"),
            End::TakenOver => info!(client = %self.session.client_id, peer = %self.peer,
                "closing connection: client id taken over by a new connection"),
            End::Shutdown => {
                debug!(client = %self.session.client_id, "closing connection: shutdown")
            }
        }

        if let (Some(will), true) = (
            self.will,
            end.publishes_will() && !matches!(end, End::Shutdown),
        ) {
            let delay = will.delay_interval.unwrap_or(0).min(self.expiry);
            let message = Message::new(
                0,
                will.topic.into(),
                will.payload,
                will.qos,
                will.retain,
                will.properties,
                self.session.client_id.clone(),
            );
            let publisher = self.identity.shared_name();
            if delay == 0 {
                accept_will(shared, message, publisher);
            } else {
                let shared = shared.clone();
                let session = self.session.clone();
                let generation = self.generation;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(delay.into())).await;
                    let resumed = {
                        let state = session.lock();
                        !state.ended && state.generation != generation
                    };
                    if !resumed {
                        accept_will(&shared, message, publisher);
                    }
                });
            }
        }
    }
}

/// Publishes a will. A retained will beyond the retained quota is not published: its client
/// is gone and cannot be told, so the refusal is logged (and counted).
fn accept_will(shared: &Arc<Shared>, message: Message, publisher: Arc<str>) {
    let (client, topic) = (message.publisher.clone(), message.topic.clone());
    if let Err(full) = shared.accept(message, publisher, now_ms(), None) {
        debug!(%client, %topic, "will not published: {full}");
    }
}

/// What the serve loop keeps from one turn to the next, besides the connection: all of it
/// stays in the task while the connection is idle, so it is kept small.
struct Turns {
    /// When the client last sent something (the keep alive counts from it).
    last_seen: Instant,
    /// When a persistent session next saves its cursor if it moved: at once, then every
    /// [`SAVE_INTERVAL`].
    next_save: Instant,
    /// The catch-up read in progress.
    catchup: Option<CatchUp>,
    /// Where the log's events for this connection arrive, once the channel is made.
    events: Option<mpsc::UnboundedReceiver<ConnEvent>>,
    /// The one timer, for the keep alive, the periodic save and the pauses; made when first
    /// needed. Boxed: it is only polled through this box, and a connection without keep alive
    /// or persistent session never needs it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer is set and has not fired: its deadline is what it is set to.
    timer_armed: bool,
    /// Reading the log failed: nothing is done until the timer fires.
    paused: bool,
}

impl Turns {
    fn new() -> Turns {
        let now = Instant::now();
        Turns {
            last_seen: now,
            next_save: now,
            catchup: None,
            events: None,
            timer: None,
            timer_armed: false,
            paused: false,
        }
    }

    /// Sets the timer to `at` unless it is set to it already: a reset takes the timer driver's
    /// lock, and a subscriber turns the loop twice per delivery at low rates.
    fn set_timer(&mut self, at: Instant) {
        match &mut self.timer {
            Some(timer) if self.timer_armed && timer.deadline() == at => {}
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(sleep_until(at))),
        }
        self.timer_armed = true;
    }

    /// Polls the timer; once it fired it stays ready until it is set again.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        ready!(timer.as_mut().poll(cx));
        self.timer_armed = false;
        Poll::Ready(())
    }
}

/// What the serve loop works on besides the connection, owned by the task.
struct Served<S> {
    stream: S,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// Bytes waiting to be written; `None` while the connection waits with nothing to write,
    /// so that an idle connection keeps no write queue.
    outbox: Option<Box<Outbox>>,
    /// The loop's own state.
    turns: Turns,
}

/// The stream and the buffers on either side of it, for one poll.
struct Io<'a, S> {
    stream: &'a mut S,
    /// Bytes read and not yet decoded.
    rbuf: &'a mut BytesMut,
    /// Bytes waiting to be written.
    outbox: &'a mut Outbox,
}

/// How the serve loop learns of a takeover, of new deliveries and of shutdown.
struct Signals<'a> {
    session: &'a Session,
    /// The connection's generation: another one in the session's link means a takeover.
    generation: u64,
    /// The broker, whose shutdown flag ([`Shared::is_closing`]) is set before
    /// `Registry::wake_all` wakes every connection.
    shared: &'a Shared,
}

/// Which of the optional branches of one turn of the serve loop may fire.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Reading is allowed (not held back by the write queue, unacknowledged publishes or a
    /// busy store).
    read: bool,
    /// The timer has a reason to fire.
    timer: bool,
}

/// What ended one wait of the serve loop.
enum Step {
    Kicked,
    ShuttingDown,
    Written(io::Result<usize>),
    Event(ConnEvent),
    CaughtUp(Result<Result<Page, StoreError>, tokio::task::JoinError>),
    Read(io::Result<usize>),
    Woken,
    Timer,
}

/// Polls everything one turn of the serve loop waits on, in priority order: the first that is
/// ready ends the wait.
fn poll_step<S>(
    cx: &mut Context<'_>,
    open: Open,
    signals: Signals<'_>,
    io: Io<'_, S>,
    turns: &mut Turns,
) -> Poll<Step>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The waker is registered before the shutdown flag is read (see `Registry::wake_all`).
    let signal = signals.session.poll_link(signals.generation, cx);
    if signal == LinkSignal::Kicked {
        return Poll::Ready(Step::Kicked);
    }
    if signals.shared.is_closing() {
        return Poll::Ready(Step::ShuttingDown);
    }
    let Io {
        stream,
        rbuf,
        outbox,
    } = io;
    if !outbox.is_empty() {
        if let Poll::Ready(written) = outbox.poll_write_some(stream, cx) {
            return Poll::Ready(Step::Written(written));
        }
    }
    // A closed channel has nothing more to say (it cannot close while the connection holds
    // its sender); the other branches still wait.
    if let Some(Poll::Ready(Some(event))) = turns.events.as_mut().map(|rx| rx.poll_recv(cx)) {
        return Poll::Ready(Step::Event(event));
    }
    if let Some(catchup) = turns.catchup.as_mut() {
        if let Poll::Ready(page) = Pin::new(&mut catchup.read).poll(cx) {
            return Poll::Ready(Step::CaughtUp(page));
        }
    }
    if open.read {
        if let Poll::Ready(read) = poll_read_some(stream, rbuf, cx) {
            return Poll::Ready(Step::Read(read));
        }
    }
    if signal == LinkSignal::Woken {
        return Poll::Ready(Step::Woken);
    }
    if open.timer && turns.poll_timer(cx).is_ready() {
        return Poll::Ready(Step::Timer);
    }
    Poll::Pending
}

/// Saves a session and waits (a bounded time) until the save is durable.
async fn save_and_wait(shared: &Shared, session: &Session, connected: bool) {
    let (saved_tx, saved_rx) = tokio::sync::oneshot::channel::<()>();
    shared.save_session(
        session,
        connected,
        Some(Box::new(move || {
            let _ = saved_tx.send(());
        })),
    );
    if timeout(CLOSE_GRACE, saved_rx).await.is_err() {
        warn!(client = %session.client_id, "session save not confirmed within {CLOSE_GRACE:?}");
    }
}

/// A catch-up read of the log in progress.
struct CatchUp {
    /// The cursor it reads after.
    from: u64,
    /// The blocking read.
    read: tokio::task::JoinHandle<Result<Page, StoreError>>,
}

/// The delivery of a logged message to a session, judged by its own (non-shared)
/// subscriptions: the highest granted QoS, every subscription id, Retain As Published.
fn delivery_for(subscriptions: &Subscriptions, message: Arc<Message>) -> Option<Delivery> {
    let mut found: Option<(QoS, bool, Vec<u32>)> = None;
    for (filter, options) in subscriptions.iter() {
        if parse_filter(filter).group.is_some() || !topic::matches(filter, &message.topic) {
            continue;
        }
        let entry = found.get_or_insert((QoS::AtMostOnce, false, Vec::new()));
        entry.0 = entry.0.max(options.qos);
        entry.1 |= options.retain_as_published;
        entry.2.extend(options.id);
    }
    let (qos, retain_as_published, subscription_ids) = found?;
    Some(Delivery {
        qos: qos.min(message.qos),
        retain: message.retain && retain_as_published,
        subscription_ids,
        from_log: true,
        message,
    })
}

fn pub_response(kind: fn(PubResponse) -> Packet, packet_id: u16, reason: ReasonCode) -> Packet {
    kind(PubResponse {
        packet_id,
        reason,
        properties: AckProperties::default(),
    })
}

/// What the packets of one read share.
#[derive(Default)]
struct ReadBatch {
    /// When the read's bytes were received (UTC milliseconds): one clock read for all its
    /// publishes (a read per publish was a measurable part of the publish path), made at the
    /// first of them (reads without a publish need none).
    received_ms: Option<i64>,
    /// Publishes accepted from the read and not yet handed to the log: they go in one send
    /// (a read often brings dozens).
    publications: Publications,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection keeps its task, and the task is its future plus about 128 bytes
    /// of Tokio's own, allocated in steps of 128: a future of at most 384 bytes makes a task of
    /// 512. A plain TCP connection's future holds 40 bytes more than this one (its admission
    /// permit and metrics guard), hence 344 here.
    #[tokio::test]
    async fn an_idle_connection_keeps_a_small_task() {
        let (broker, _dir) = crate::broker::test_broker(
            crate::config::Limits::default(),
            crate::auth::Users::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let info = ConnectionInfo::new(addr, "tcp");
        let task = run(broker.shared.clone(), stream, info, ());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 344, "the connection future grew to {size} bytes");
    }
}
