//! One task per connection: the CONNECT handshake, then a loop that reads packets, runs the QoS
//! state machines, moves queued deliveries into the outbox and writes them in batches.
//!
//! Every way a connection can end goes through `End`, which decides the will, the
//! session's fate and the final DISCONNECT an MQTT 5 client is owed.
//!
//! # Layout
//! One concern per file; each adds the methods of its concern to `Connection`, defined here
//! with the state every concern shares.
//! - `aliases`: MQTT 5 topic aliases in both directions, and their byte limit.
//! - `handshake`: the first packet, authentication, client-id assignment, CONNACK.
//! - `serve`: the serve loop and its I/O: one poll per wake of the task (timers, reads,
//!   writes, the log's answers, the session's signals).
//! - `inbound`: a read's packets, decoded and dispatched; acknowledgements from the client.
//! - `publish`: an inbound PUBLISH, from its topic (alias) and verdict to its hand-over to the
//!   log, and its acknowledgement once the log has it.
//! - `subscribe`: SUBSCRIBE and UNSUBSCRIBE, and their acknowledgement.
//! - `qos`: the QoS 1/2 rules as decisions without I/O (inflight window, stages, QoS 2
//!   duplicates, acknowledgements), unit-tested.
//! - `outbound`: queued deliveries into the outbox within the inflight window; one PUBLISH.
//! - `catchup`: reading what a lagging session missed from the log.
//! - `save`: saving a persistent session, and what waits for a save to be durable.
//! - `end`: how a connection ends (`End`): the final DISCONNECT, the session's
//!   fate, the will.
//!
//! Depends on the broker's shared state (`Shared`, through its named methods), sessions,
//! messages, the outbox and the publish pipeline; nothing in the broker depends on it but
//! [`super::Broker::serve`].

mod aliases;
mod catchup;
mod end;
mod handshake;
mod inbound;
mod outbound;
mod publish;
mod qos;
mod save;
mod serve;
mod subscribe;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use firehose_codec::{
    AckProperties, EncodeError, Packet, Protocol, PubResponse, QoS, ReasonCode, Will,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::message::Delivery;
use super::outbox::Outbox;
use super::session::Session;
use super::shared::Shared;
use super::ConnectionInfo;
use crate::auth::Identity;
use aliases::TopicAliases;
use serve::{Served, Turns};

/// Stop reading from a client while this many bytes wait to be written to it, so a client that
/// floods without reading cannot grow our memory.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// How long final packets may take to leave before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

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
        let opening = handshake::open(&shared, &mut io.stream, &mut io.rbuf, *info);
        let Some(mut conn) = Box::pin(opening).await else {
            return;
        };
        let mut outbox = Box::<Outbox>::default();
        conn.start(&mut outbox);
        io.outbox = Some(outbox);
        io.turns.last_seen = Instant::now();
        // Packets that came in the same read as the CONNECT (a client may send them before
        // its CONNACK) are decoded by the loop's first turn.
        io.turns.unread = !io.rbuf.is_empty();
        let end = std::future::poll_fn(|cx| conn.poll_serve(cx, &mut io)).await;
        let mut outbox = io.outbox.take().unwrap_or_default();
        Box::pin(conn.finish(end, &mut io.stream, &mut outbox)).await;
        drop(held);
    }
}

/// The state of one connected client.
struct Connection {
    /// The broker, reached through its named methods.
    shared: Arc<Shared>,
    /// The session this connection is attached to.
    session: Arc<Session>,
    /// This connection's generation of the session: another one there means a takeover.
    generation: u64,
    /// MQTT 3.1.1 or 5, from CONNECT.
    protocol: Protocol,
    /// Who the client authenticated as (anonymous included): its ACL.
    identity: Identity,
    /// The client's address, for logs.
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
    /// Topic aliases (MQTT 5), those the client set and those we set towards it.
    aliases: TopicAliases,
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
    /// and its [`publish_verdict`](crate::broker::pipeline::publish_verdict).
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
    /// The client's packet id of the publish.
    packet_id: u16,
    /// Its QoS (1 or 2): PUBACK or PUBREC.
    qos: QoS,
    /// Whether the log stored it.
    stored: bool,
}

impl Connection {
    /// Whether the client speaks MQTT 5 (reason codes, properties, aliases).
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

    /// The state only some connections need, made on first use.
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
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

    /// Queues `packet`, encoded for this client's protocol.
    fn push(&self, outbox: &mut Outbox, packet: &Packet) -> Result<(), EncodeError> {
        outbox.push_packet(packet, self.protocol).map(|_| ())
    }

    /// [`Connection::push`], logging a packet that cannot be encoded (it is not sent).
    fn push_or_log(&self, outbox: &mut Outbox, packet: &Packet) {
        if let Err(error) = self.push(outbox, packet) {
            warn!(client = ?self.session.client_id, "cannot encode {}: {error}", packet.name());
        }
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP (`kind`) without properties.
fn pub_response(kind: fn(PubResponse) -> Packet, packet_id: u16, reason: ReasonCode) -> Packet {
    kind(PubResponse {
        packet_id,
        reason,
        properties: AckProperties::default(),
    })
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
