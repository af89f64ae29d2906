//! Password guessing against the real binary: backoff by address and by user name, the bounded
//! queue of checks, and a valid login that a flood of wrong passwords does not hold up.
//!
//! Clients speak from several loopback addresses (127.0.0.0/8 all reach the listener), with
//! `mosquitto_pub -A` and raw sockets. Nothing is timed: what the flood cost is read from the
//! broker's count of argon2 checks (`$SYS/broker/auth/password_checks`, read once the clients
//! are done), and the answers are the CONNACK codes.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use common::wire::ConnectOpts;
use common::{
    have_mosquitto_clients, mosquitto_pub, RawClient, Server, ServerOptions, PUB_PASSWORD, TIMEOUT,
};

/// Backoff long enough never to end during a test, after two free failures.
const BACKOFF: &str = "[limits]\nauth_failures_before_backoff = 2\n\
                       auth_backoff_initial_secs = 600\nauth_backoff_max_secs = 600\n";

fn server(config: &str) -> Server {
    Server::start(ServerOptions::standard().with_config(config))
}

/// The `$SYS/broker/auth/...` counters as they stand now (call it once the clients are done).
/// Retained values may be older than that: only a publication after subscribing counts.
fn auth_counters(addr: SocketAddr) -> HashMap<String, u64> {
    const NAMES: [&str; 4] = [
        "password_checks",
        "password_failures",
        "refused/backoff",
        "refused/busy",
    ];
    let mut sub = RawClient::anonymous(addr, true, "sys");
    sub.subscribe("$SYS/broker/auth/#", 0);
    let mut latest = HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while !NAMES.iter().all(|name| latest.contains_key(*name)) {
        assert!(
            Instant::now() < deadline,
            "no $SYS/broker/auth/ publication: {latest:#?}"
        );
        let p = sub.expect_publish();
        let value = std::str::from_utf8(&p.payload)
            .ok()
            .and_then(|v| v.parse().ok());
        if let (false, Some(name), Some(value)) =
            (p.retain, p.topic.strip_prefix("$SYS/broker/auth/"), value)
        {
            latest.insert(name.to_owned(), value);
        }
    }
    latest
}

fn value(values: &HashMap<String, u64>, name: &str) -> u64 {
    values.get(name).copied().unwrap_or(0)
}

/// `mosquitto_pub` from `source` as `user`; returns its stderr, lower case, when it fails.
fn mosquitto_login(
    server: &Server,
    v5: bool,
    source: &str,
    user: &str,
    password: &str,
) -> Option<String> {
    let out = mosquitto_pub(
        server.addr,
        v5,
        &[
            "-A", source, "-u", user, "-P", password, "-t", "auth/x", "-m", "m",
        ],
    );
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_lowercase())
}

/// Runs `body` on MQTT 3.1.1, then 5.0, with Mosquitto's clients.
fn both_versions(body: fn(bool)) {
    assert!(
        have_mosquitto_clients(),
        "install mosquitto-clients (scripts/test does)"
    );
    body(false);
    body(true);
}

/// A shell loop of `mosquitto_pub` with wrong passwords, from one address: the first ones
/// are checked and answered "bad user name or password"; once the address is backed off, the
/// others are answered "server unavailable" / "Server busy" without a check. A valid login
/// from another address goes through.
#[test]
fn wrong_passwords_in_a_loop_are_backed_off_without_a_check() {
    both_versions(wrong_passwords_in_a_loop);
}

fn wrong_passwords_in_a_loop(v5: bool) {
    let server = server(BACKOFF);
    let refusals: Vec<String> = (0..6)
        .map(|n| {
            mosquitto_login(&server, v5, "127.0.0.2", &format!("guess-{n}"), "wrong")
                .expect("a wrong password is refused")
        })
        .collect();
    let bad = |text: &String| text.contains("bad user name or password");
    let busy = |text: &String| text.contains("broker unavailable") || text.contains("server busy");
    assert!(refusals[..3].iter().all(bad), "{refusals:#?}");
    assert!(refusals[3..].iter().all(busy), "{refusals:#?}");
    let valid = mosquitto_login(&server, v5, "127.0.0.3", "pub", PUB_PASSWORD);
    assert_eq!(valid, None, "the valid login from another address");
    let values = auth_counters(server.addr);
    assert_eq!(
        value(&values, "password_checks"),
        4,
        "three guesses and the valid login"
    );
    assert_eq!(value(&values, "refused/backoff"), 3);
    assert_eq!(value(&values, "password_failures"), 3);
}

/// Guesses at one user name from many addresses back the name off: a further guess from yet
/// another address is refused unchecked, while the user's remembered login (the same name and
/// password, checked right a moment ago) goes through at once, from anywhere.
#[test]
fn a_user_name_under_attack_still_lets_in_the_logins_it_remembers() {
    both_versions(a_user_name_under_attack);
}

fn a_user_name_under_attack(v5: bool) {
    let server = server(BACKOFF);
    assert_eq!(
        mosquitto_login(&server, v5, "127.0.0.3", "pub", PUB_PASSWORD),
        None
    );
    for n in 0..3 {
        let source = format!("127.0.1.{n}");
        let refused = mosquitto_login(&server, v5, &source, "pub", &format!("guess-{n}"));
        assert!(
            refused.is_some_and(|text| text.contains("bad user name")),
            "guess {n}"
        );
    }
    let guess = mosquitto_login(&server, v5, "127.0.0.9", "pub", "guess-3")
        .expect("a guess from a new address is refused while the user name is backed off");
    assert!(
        guess.contains("broker unavailable") || guess.contains("server busy"),
        "{guess}"
    );
    for source in ["127.0.0.3", "127.0.0.10"] {
        let login = mosquitto_login(&server, v5, source, "pub", PUB_PASSWORD);
        assert_eq!(login, None, "the user's remembered login from {source}");
    }
    let values = auth_counters(server.addr);
    assert_eq!(
        value(&values, "password_checks"),
        4,
        "one login and three guesses"
    );
}

/// Logins with distinct wrong passwords, connected and ready to send their CONNECT at once.
struct Flood {
    /// Lets them go; the test is one more party of it.
    start: Arc<Barrier>,
    /// Each returns its CONNACK code.
    clients: Vec<thread::JoinHandle<u8>>,
}

impl Flood {
    /// `count` logins as `user` from the addresses `source(i)`.
    fn new(
        addr: SocketAddr,
        v5: bool,
        count: usize,
        user: &'static str,
        source: fn(usize) -> String,
    ) -> Flood {
        let start = Arc::new(Barrier::new(count + 1));
        let clients = (0..count)
            .map(|i| {
                let start = start.clone();
                thread::spawn(move || {
                    let mut client = RawClient::tcp_from(&source(i), addr);
                    let guess = format!("guess-{i}");
                    let opts = ConnectOpts::new(v5, &format!("flood-{i}")).auth(user, &guess);
                    client.v5 = v5;
                    start.wait();
                    client.send(&opts.encode());
                    client.expect_packet().connack(v5).expect("CONNACK").code
                })
            })
            .collect();
        Flood { start, clients }
    }

    /// Waits for every answer; returns how many were `bad` (checked) and how many
    /// `unchecked`, asserting that there was no other.
    fn answers(self, bad: u8, unchecked: u8) -> (u64, u64) {
        let codes: Vec<u8> = self
            .clients
            .into_iter()
            .map(|client| client.join().expect("flood client"))
            .collect();
        let count = |code| codes.iter().filter(|&&c| c == code).count();
        assert_eq!(count(bad) + count(unchecked), codes.len(), "{codes:?}");
        (count(bad) as u64, count(unchecked) as u64)
    }
}

/// The case: 150 wrong passwords at once from one address, and a valid login from
/// another among them. Without the limits, all 150 were checked, most before the valid login
/// (2 s of two cores); now the address has at most two checks at a time and is backed off
/// after its fourth failure, so the valid login waits for a handful at most, and the rest of
/// the flood is refused unchecked. (Default limits, but a backoff that cannot end during the
/// flood however slow the machine.)
#[test]
fn a_flood_of_wrong_passwords_does_not_hold_up_a_valid_login_from_another_address() {
    let server = server("[limits]\nauth_backoff_initial_secs = 600\nauth_backoff_max_secs = 600\n");
    let flood = Flood::new(server.addr, false, 150, "limited", |_| "127.0.0.2".into());
    let mut valid = RawClient::tcp_from("127.0.0.3", server.addr);
    flood.start.wait();
    let login = ConnectOpts::new(false, "valid").auth("pub", PUB_PASSWORD);
    valid.send(&login.encode());
    let connack = valid.expect_packet().connack(false).expect("CONNACK");
    assert_eq!(connack.code, 0, "the valid login");
    let (bad, unavailable) = flood.answers(4, 3);
    let values = auth_counters(server.addr);
    // Checked at most: the three free failures, the fourth that starts the backoff, and one
    // more already in the queue beside it (two at a time per address). Only checked guesses
    // are told "bad credentials".
    assert!(bad <= 5, "{bad} guesses from one address were checked");
    assert_eq!(
        value(&values, "refused/backoff") + value(&values, "refused/busy"),
        unavailable,
        "the others were refused unchecked"
    );
    assert_eq!(
        value(&values, "password_checks"),
        bad + 1,
        "argon2 checks: the guesses answered bad credentials, and the valid login"
    );
}

/// Beyond `max_password_checks`, a login is answered "Server unavailable" at once, not queued.
#[test]
fn beyond_the_queue_of_checks_logins_are_answered_server_unavailable() {
    let server = server("[limits]\nmax_password_checks = 2\nauth_failures_before_backoff = 100\n");
    let flood = Flood::new(server.addr, true, 40, "pub", |i| {
        format!("127.0.2.{}", i + 1)
    });
    flood.start.wait();
    let (bad, unavailable) = flood.answers(0x86, 0x88);
    assert!(unavailable > 0, "40 logins at once, 2 checks at a time");
    let values = auth_counters(server.addr);
    assert_eq!(value(&values, "password_checks"), bad);
    assert_eq!(value(&values, "refused/busy"), unavailable);
}
