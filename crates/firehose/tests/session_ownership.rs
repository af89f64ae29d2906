//! Sessions belong to the identity that created them (issue 21, point 1), against the real
//! binary with raw MQTT 3.1.1 and 5.0 clients: another identity's CONNECT with the client id is
//! refused (5: CONNACK 0x85, 3.1.1: return code 2) without kicking the owner or firing its will;
//! anonymous clients share their sessions; `$share` groups are one per identity; a filter the
//! users file no longer allows is dropped when the session comes back from the store.

#[macro_use]
mod common;

use std::time::Duration;

use common::durable::{eventually, DataDir};
use common::wire::{prop, ConnectOpts, PropsOut, PublishOut, WillOpts};
use common::{
    users_toml, Got, RawClient, Server, ServerOptions, User, LIMITED_PASSWORD, PUB_PASSWORD,
    TIMEOUT,
};

both_versions! {
    another_identity_cannot_take_a_users_client_id => another_identity_cannot_take_a_users_client_id;
    a_users_offline_session_is_kept_for_the_user => a_users_offline_session_is_kept_for_the_user;
    anonymous_clients_resume_anonymous_sessions => anonymous_clients_resume_anonymous_sessions;
    shared_groups_are_separate_per_identity => shared_groups_are_separate_per_identity;
}

/// CONNACK "Client Identifier not valid": 0x85 in MQTT 5, return code 2 in 3.1.1.
fn not_valid(v5: bool) -> u8 {
    if v5 {
        0x85
    } else {
        2
    }
}

/// A persistent CONNECT (3.1.1 clean session 0; 5 Clean Start 0 with an hour of expiry).
fn persistent(v5: bool, id: &str) -> ConnectOpts {
    ConnectOpts::persistent(v5, id, 3600)
}

/// Connects with `opts`, expects the refusal `code` and the connection closed after it.
fn expect_refused(server: &Server, opts: &ConnectOpts, code: u8) {
    let (mut client, connack) = RawClient::connect_with(server.addr, opts);
    assert_eq!(
        (connack.code, connack.session_present),
        (code, false),
        "{}: CONNACK {connack:?}",
        client.name
    );
    client.expect_closed();
}

fn another_identity_cannot_take_a_users_client_id(v5: bool) {
    let server = Server::standard();
    let id = Server::client_id("bridge");
    let mut watcher = RawClient::anonymous(server.addr, v5, "watcher");
    watcher.subscribe("test/will/#", 1);
    let will = WillOpts {
        qos: 1,
        ..WillOpts::new("test/will/owner", b"owner gone")
    };
    let (mut owner, _) = RawClient::connect(
        server.addr,
        &persistent(v5, &id)
            .auth("pub", PUB_PASSWORD)
            .will(will)
            .keep_alive(0),
    );
    owner.subscribe("test/own/#", 1);

    for clean in [false, true] {
        let anonymous = persistent(v5, &id).clean(clean);
        expect_refused(&server, &anonymous, not_valid(v5));
        let other_user = anonymous.auth("limited", LIMITED_PASSWORD);
        expect_refused(&server, &other_user, not_valid(v5));
    }

    // The owner was neither kicked nor told anything, and its will was not published.
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/own/x", b"still yours").qos(1, 1));
    let got = owner.expect_publish();
    assert_eq!(got.payload, b"still yours");
    owner.ack_publish(&got);
    owner.ping();
    publisher.publish(PublishOut::new("test/will/marker", b"marker").qos(1, 1));
    let before = watcher.publishes_until(b"marker");
    assert!(before.is_empty(), "will published: {before:?}");
    eventually(TIMEOUT, "the refusal is logged", || {
        server.log().contains("refused CONNECT")
    });
}

/// An anonymous client that knows a user's client id cannot resume its offline session (and
/// take its queued messages): the user gets them.
fn a_users_offline_session_is_kept_for_the_user(v5: bool) {
    let server = Server::standard();
    let id = Server::client_id("private");
    let user = || persistent(v5, &id).auth("pub", PUB_PASSWORD);
    let (mut first, _) = RawClient::connect(server.addr, &user());
    first.subscribe("test/queued/#", 1);
    first.disconnect();
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/queued/1", b"for the user").qos(1, 1));

    expect_refused(&server, &persistent(v5, &id), not_valid(v5));

    let (mut back, connack) = RawClient::connect(server.addr, &user());
    assert!(connack.session_present, "the user's session is still there");
    assert_eq!(back.expect_publish().payload, b"for the user");
}

/// Anonymous clients are one identity: one may resume what another left (hence unguessable
/// client ids, docs/consumers.md).
fn anonymous_clients_resume_anonymous_sessions(v5: bool) {
    let server = Server::standard();
    let id = Server::client_id("anon-shared");
    let (mut first, _) = RawClient::connect(server.addr, &persistent(v5, &id));
    first.subscribe("test/anon/#", 1);
    first.disconnect();
    let mut publisher = RawClient::publisher(server.addr, v5);
    publisher.publish(PublishOut::new("test/anon/1", b"queued").qos(1, 1));
    let (mut second, connack) = RawClient::connect(server.addr, &persistent(v5, &id));
    assert!(connack.session_present);
    assert_eq!(second.expect_publish().payload, b"queued");
}

/// A group of the same name is another group for another identity: the user's member gets
/// every message, not the half an anonymous member of "the same" group would leave it.
fn shared_groups_are_separate_per_identity(v5: bool) {
    let server = Server::standard();
    let (mut user, _) = RawClient::connect(
        server.addr,
        &ConnectOpts::new(v5, &Server::client_id("user-member")).auth("pub", PUB_PASSWORD),
    );
    user.subscribe("$share/workers/test/jobs", 1);
    let mut anonymous = RawClient::anonymous(server.addr, v5, "anon-member");
    anonymous.subscribe("$share/workers/test/jobs", 1);
    let mut publisher = RawClient::publisher(server.addr, v5);
    const N: usize = 10;
    for i in 0..N {
        publisher.publish(PublishOut::new("test/jobs", format!("job{i}").as_bytes()).qos(1, 1));
    }
    for member in [&mut user, &mut anonymous] {
        let got: Vec<Vec<u8>> = (0..N)
            .map(|_| {
                let p = member.expect_publish();
                member.ack_publish(&p);
                p.payload
            })
            .collect();
        let all: Vec<Vec<u8>> = (0..N).map(|i| format!("job{i}").into_bytes()).collect();
        assert_eq!(got, all, "{}: every job of its own group", member.name);
    }
}

/// A user whose `subscribe` list shrank while the broker was down: the filters of its stored
/// session that fall outside it are dropped at startup (logged, and deleted from the store),
/// so nothing is routed to the session by them, live or from the log; the others stay.
#[test]
fn filters_the_users_file_no_longer_allows_are_dropped_at_startup() {
    let reader = |subscribe: &[&str]| User {
        subscribe: Some(subscribe.iter().map(|s| s.to_string()).collect()),
        ..User::new("reader", "reader-secret", &[])
    };
    let mut users = ServerOptions::standard().users;
    users.push(reader(&["test/#"]));
    let dd = DataDir::new(&users, "");
    let id = "reader-session";
    let connect = || persistent(true, id).auth("reader", "reader-secret");
    let node = dd.start();
    let (mut client, _) = RawClient::connect(node.mqtt, &connect());
    client.subscribe("test/kept/#", 1);
    client.subscribe("test/secret/#", 1);
    client.disconnect();
    let _ = node.terminate();

    users.pop();
    users.push(reader(&["test/kept/#"]));
    std::fs::write(dd.dir.path().join("users.toml"), users_toml(&users)).expect("users file");
    let node = dd.start();
    assert!(
        node.log().contains("stored subscriptions dropped"),
        "the drop is logged:\n{}",
        node.log()
    );
    let mut publisher = RawClient::publisher(node.mqtt, true);
    publisher.publish(PublishOut::new("test/secret/1", b"offline secret").qos(1, 1));
    let (mut client, connack) = RawClient::connect(node.mqtt, &connect());
    assert!(connack.session_present);
    publisher.publish(PublishOut::new("test/secret/2", b"live secret").qos(1, 1));
    publisher.publish(PublishOut::new("test/kept/1", b"kept").qos(1, 1));
    let got = client.publishes_until(b"kept");
    assert!(got.is_empty(), "delivered by a dropped filter: {got:?}");
    client.disconnect();
    let _ = node.terminate();

    // Deleted from the store too: the next start has nothing to drop.
    let node = dd.start();
    let (mut client, _) = RawClient::connect(node.mqtt, &connect());
    let mut publisher = RawClient::publisher(node.mqtt, true);
    publisher.publish(PublishOut::new("test/kept/2", b"still kept").qos(1, 1));
    assert_eq!(client.expect_publish().payload, b"still kept");
    assert!(!node.log().contains("stored subscriptions dropped"));
}

/// The sessions of a user that left the users file are not restored (nobody could resume
/// them) but stay in the store, and come back with their user.
#[test]
fn a_session_whose_user_left_the_users_file_waits_in_the_store() {
    let mut users = ServerOptions::standard().users;
    users.push(User::new("visitor", "visitor-secret", &[]));
    let dd = DataDir::new(&users, "");
    let connect = || persistent(true, "visitor-session").auth("visitor", "visitor-secret");
    let node = dd.start();
    let (mut client, _) = RawClient::connect(node.mqtt, &connect());
    client.subscribe("test/visit/#", 1);
    client.disconnect();
    let _ = node.terminate();

    let users_file = dd.dir.path().join("users.toml");
    users.pop();
    std::fs::write(&users_file, users_toml(&users)).expect("users file");
    let node = dd.start();
    assert!(node.log().contains("left in the store"), "{}", node.log());
    // Nobody owns the client id now: an anonymous client may use it, without the stored
    // session (a persistent one would replace it: this one is clean).
    let (anonymous, connack) =
        RawClient::connect(node.mqtt, &ConnectOpts::new(true, "visitor-session"));
    assert!(!connack.session_present);
    anonymous.disconnect();
    let _ = node.terminate();

    users.push(User::new("visitor", "visitor-secret", &[]));
    std::fs::write(&users_file, users_toml(&users)).expect("users file");
    let node = dd.start();
    let (mut client, connack) = RawClient::connect(node.mqtt, &connect());
    assert!(
        connack.session_present,
        "the session came back with its user"
    );
    let mut publisher = RawClient::publisher(node.mqtt, true);
    publisher.publish(PublishOut::new("test/visit/1", b"welcome back").qos(1, 1));
    assert_eq!(client.expect_publish().payload, b"welcome back");
}

/// The server-assigned client id of an MQTT 5 persistent session is unguessable: 128 random
/// bits, never the time.
#[test]
fn assigned_client_ids_are_unguessable() {
    let server = Server::standard();
    let opts = ConnectOpts::new(true, "")
        .clean(false)
        .props(PropsOut::new().u32(prop::SESSION_EXPIRY, 60));
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (client, connack) = RawClient::connect(server.addr, &opts);
            client.disconnect();
            connack
                .props
                .string(prop::ASSIGNED_CLIENT_ID)
                .expect("assigned client id")
                .to_owned()
        })
        .collect();
    for id in &ids {
        let random = id.strip_prefix("firehose-").expect("prefix");
        assert_eq!(random.len(), 32, "{id}");
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(ids[0], ids[1]);
}

/// `$SYS/broker/sessions/refused/owner` counts the refusals.
#[test]
fn refusals_are_counted_in_sys() {
    let server = Server::standard();
    let id = Server::client_id("counted");
    let (_owner, _) = RawClient::connect(
        server.addr,
        &ConnectOpts::new(true, &id).auth("pub", PUB_PASSWORD),
    );
    expect_refused(&server, &ConnectOpts::new(true, &id), 0x85);
    let mut sys = RawClient::anonymous(server.addr, true, "sys");
    sys.subscribe("$SYS/broker/sessions/refused/owner", 0);
    eventually(TIMEOUT, "$SYS counts the refusal", || {
        matches!(sys.read(Duration::from_millis(200)), Got::Packet(p)
            if p.publish(true).is_ok_and(|p| p.payload == b"1"))
    });
}
