//! The operator interface of the binary: `firehose passwd`, `firehose serve` start-up from flags
//! and config file, clean exit on SIGTERM, and clear failures on bad configuration.

mod common;

use std::process::Command;
use std::time::Duration;

use common::wire::ConnectOpts;
use common::{
    firehose_bin, hash_password, run_with_timeout, users_toml, write_file, RawClient, Server,
    ServerOptions, Startup, User, PUB_PASSWORD,
};

#[test]
fn passwd_prints_salted_argon2id_hash() {
    let run = || {
        let out = run_with_timeout(
            Command::new(firehose_bin()).arg("passwd"),
            b"correct horse\n",
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "firehose passwd: {}", out.status);
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let first = run();
    let second = run();
    assert!(first.starts_with("$argon2id$"), "output {first:?}");
    assert_eq!(first.trim_end().lines().count(), 1, "one line: {first:?}");
    assert_ne!(
        first, second,
        "two hashes of one password must differ (salt)"
    );
}

#[test]
fn serve_exits_zero_on_sigterm() {
    let mut server = Server::standard();
    let mut client = RawClient::anonymous(server.addr, true, "sigterm");
    client.subscribe("test/#", 1);
    let status = server.terminate();
    assert!(
        status.success(),
        "exit status {status} on SIGTERM; log:\n{}",
        server.log()
    );
    client.expect_closed();
}

/// An idle connection waits on its session's link, which shutdown wakes after setting the
/// broker's flag: the MQTT 5 client is told why (0x8B) before the socket closes, not cut off
/// when the process exits.
#[test]
fn sigterm_tells_idle_mqtt5_clients_why() {
    let mut server = Server::standard();
    let mut client = RawClient::anonymous(server.addr, true, "idle-sigterm");
    client.subscribe("test/#", 1);
    // Long enough for the connection to have nothing left to do.
    std::thread::sleep(Duration::from_millis(200));
    let terminated = std::thread::spawn(move || {
        let status = server.terminate();
        (server, status)
    });
    let reasons: Vec<u8> = client
        .expect_closed()
        .iter()
        .map(|p| p.disconnect_reason().expect("only DISCONNECT before close"))
        .collect();
    let (server, status) = terminated.join().expect("terminate");
    assert_eq!(reasons, vec![0x8B], "log:\n{}", server.log());
    assert!(
        status.success(),
        "exit status {status} on SIGTERM; log:\n{}",
        server.log()
    );
}

#[test]
fn serve_logs_bound_address_once_per_listener() {
    let server = Server::standard();
    let log = server.log();
    assert_eq!(
        log.matches("MQTT listener bound addr=").count(),
        1,
        "log:\n{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in a non-tty log:\n{log}"
    );
}

/// Starts the server with `options` and expects it to refuse to start; returns its stderr.
fn expect_startup_failure(options: ServerOptions, what: &str) -> String {
    let (server, startup) = Server::spawn(options);
    let status = match startup {
        Startup::Exited(status) => status,
        Startup::Bound(addr) => {
            panic!(
                "server started on {addr} despite {what}; log:\n{}",
                server.log()
            )
        }
    };
    let log = server.log();
    assert!(!status.success(), "{what}: exit status {status}");
    assert!(!log.trim().is_empty(), "{what}: no message on stderr");
    assert!(
        !log.contains("panicked"),
        "{what}: panic instead of a message:\n{log}"
    );
    log
}

#[test]
fn unknown_config_key_refused() {
    let log = expect_startup_failure(
        ServerOptions::default().with_config("bogus_key = 1"),
        "an unknown key",
    );
    assert!(
        log.contains("bogus_key"),
        "message does not name the key:\n{log}"
    );
}

#[test]
fn unknown_key_in_section_refused() {
    let log = expect_startup_failure(
        ServerOptions::default().with_config("[limits]\nmax_conections = 3"),
        "a misspelt limit",
    );
    assert!(
        log.contains("max_conections"),
        "message does not name the key:\n{log}"
    );
}

#[test]
fn invalid_toml_refused() {
    expect_startup_failure(
        ServerOptions::default().with_config("[limits\nmax_connections = "),
        "a syntax error",
    );
}

#[test]
fn wrong_value_type_refused() {
    expect_startup_failure(
        ServerOptions::default().with_config("[limits]\nmax_connections = \"lots\""),
        "a string where a number belongs",
    );
}

#[test]
fn invalid_listen_address_refused() {
    let log = expect_startup_failure(
        ServerOptions {
            no_mqtt_flag: true,
            extra_args: vec!["--mqtt".into(), "not-an-address".into()],
            ..ServerOptions::default()
        },
        "an invalid --mqtt address",
    );
    assert!(
        log.contains("not-an-address"),
        "message does not name the value:\n{log}"
    );
}

#[test]
fn users_file_with_bad_hash_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let users = write_file(
        dir.path(),
        "users.toml",
        "[[user]]\nname = \"broken\"\npassword = \"plain-text-not-a-hash\"\npublish = [\"#\"]\n",
    );
    let log = expect_startup_failure(
        ServerOptions {
            extra_args: vec!["--users".into(), users.display().to_string()],
            ..ServerOptions::default()
        },
        "a users file with a bad hash",
    );
    assert!(
        log.contains("broken") || log.contains("users.toml"),
        "message names neither the user nor the file:\n{log}"
    );
}

#[test]
fn missing_users_file_refused() {
    expect_startup_failure(
        ServerOptions {
            extra_args: vec!["--users".into(), "/nonexistent/users.toml".into()],
            ..ServerOptions::default()
        },
        "a users file that does not exist",
    );
}

#[test]
fn config_file_sets_listener_and_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let users = write_file(
        dir.path(),
        "users.toml",
        &users_toml(&[User::new("pub", PUB_PASSWORD, &["#"])]),
    );
    let config = format!(
        "users = {}\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        common::toml_str(&users.display().to_string())
    );
    let server = Server::start(ServerOptions {
        config,
        no_mqtt_flag: true,
        ..ServerOptions::default()
    });
    assert!(server.addr.ip().is_loopback(), "bound {}", server.addr);
    let mut sub = RawClient::anonymous(server.addr, false, "cfg-sub");
    sub.subscribe("test/cfg", 0);
    let opts = ConnectOpts::new(false, "cfg-pub").auth("pub", PUB_PASSWORD);
    let (mut publisher, _) = RawClient::connect(server.addr, &opts);
    publisher.publish0("test/cfg", b"from-config-users");
    assert_eq!(sub.expect_publish().payload, b"from-config-users");
}

#[test]
fn flags_override_config_file() {
    // The config file asks for a port that is certainly taken (the one a live server holds);
    // --mqtt 127.0.0.1:0 must win.
    let other = Server::standard();
    let server = Server::start(
        ServerOptions::default().with_config(&format!("[mqtt]\nlisten = \"{}\"", other.addr)),
    );
    assert_ne!(server.addr, other.addr);
    RawClient::anonymous(server.addr, false, "override").ping();
}

#[test]
fn hash_helper_matches_passwd_output_format() {
    // The harness itself: a hash from `firehose passwd` is accepted by `serve --users`.
    let hash = hash_password("harness-check");
    assert!(hash.starts_with("$argon2id$"));
    let server = Server::start(ServerOptions {
        users: vec![User::new("check", "harness-check", &["x/#"])],
        ..ServerOptions::default()
    });
    let opts = ConnectOpts::new(true, "check").auth("check", "harness-check");
    let (mut client, _) = RawClient::connect(server.addr, &opts);
    client.ping();
}

#[test]
fn example_config_loads() {
    // `serve --help` points operators at this file: it must stay loadable.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/firehose.example.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", example.display()));
    let server = Server::start(ServerOptions {
        config: text,
        ..ServerOptions::default()
    });
    RawClient::anonymous(server.addr, true, "example").ping();
}
