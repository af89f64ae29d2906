//! Logs that cannot be forged: a client id or user name carrying a newline, a forged-looking
//! log line and terminal escape sequences ends up as one log line, with those characters
//! escaped, and no control character reaches the log (or the terminal that shows it).

mod common;

use std::time::{Duration, Instant};

use common::wire::ConnectOpts;
use common::{RawClient, Server, TIMEOUT};

/// What an attacker would like the operator to read: a line of the broker's own format.
const FORGED: &str = "2031-01-01T00:00:00.000000Z  INFO firehose::broker::connection::handshake: \
                      client connected client=\"gerrit-bridge\" user=\"gerrit-bridge\"";

/// The server's log once it has a line containing each of `needles`.
fn log_with(server: &Server, needles: &[&str]) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = server.log();
        if needles
            .iter()
            .all(|needle| log.lines().any(|line| line.contains(needle)))
        {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needles:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_id_and_a_user_name_with_a_forged_line_stay_on_one_escaped_line() {
    let server = Server::standard();
    // Accepted (anonymous): "client connected" logs the client id.
    let id = format!("evil\n{FORGED}\u{1b}[2J\u{1b}]0;owned\u{7}\r");
    let (client, _) = RawClient::connect(server.addr, &ConnectOpts::new(true, &id));
    // Refused: "refused CONNECT" logs the user name.
    let user = format!("nobody\r\n{FORGED}\u{1b}[8m");
    let login = ConnectOpts::new(false, "evil-login").auth(&user, "x");
    let (_refused, connack) = RawClient::connect_with(server.addr, &login);
    assert_eq!(connack.code, 4, "bad user name or password");
    client.disconnect();

    let log = log_with(&server, &["client connected", "refused CONNECT"]);
    for control in ['\u{1b}', '\u{7}', '\r'] {
        assert!(
            !log.contains(control),
            "{control:?} reached the log:\n{log}"
        );
    }
    assert!(
        !log.lines().any(|line| line.starts_with("2031-")),
        "a forged line:\n{log}"
    );
    let forged: Vec<&str> = log.lines().filter(|line| line.contains("2031-")).collect();
    assert_eq!(
        forged.len(),
        2,
        "one line each for the id and the name:\n{log}"
    );
    let line = |needle: &str| {
        forged
            .iter()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
            .to_string()
    };
    let connected = line("client connected client=\"evil");
    assert!(
        connected.contains("client=\"evil\\n2031-01-01T00:00:00.000000Z  INFO")
            && connected.contains("\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\r\""),
        "the client id, escaped in its field: {connected}"
    );
    let refused = line("refused CONNECT");
    assert!(
        refused.contains("user=\"nobody\\r\\n2031-01-01T00:00:00.000000Z  INFO")
            && refused.contains("\\u{1b}[8m\""),
        "the user name, escaped in its field: {refused}"
    );
}
