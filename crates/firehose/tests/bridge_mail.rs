//! The mail bridge against a real IMAP server: Debian's dovecot, started by the test as an
//! unprivileged process on a free loopback port with its own config (passwd-file users with
//! plain passwords, Maildir in a temp dir, no SSL). Fixture messages modelled on Launchpad bug
//! notifications, ordinary mail and malformed MIME are delivered into the Maildir; the test
//! checks the events, the `\Seen` flags dovecot stores (in the Maildir file names), a message
//! delivered while the bridge is in IDLE, `on_processed = "delete"`, and that a restart of
//! Firehose publishes nothing twice.

mod bridge_support;
mod common;
mod transport_support;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use bridge_support::{fixture, wait_until};
use common::durable::{enc, history, http_json, DataDir, Node};

/// Where Debian's `dovecot-core` puts the daemon.
const DOVECOT: &str = "/usr/sbin/dovecot";

/// The unprivileged user dovecot runs as when the test runs as root (`nobody`).
const NOBODY: u32 = 65534;

/// A dovecot IMAP server in a temp dir; stopped on drop.
struct Dovecot {
    /// The temp dir: config, passwd file, Maildirs, log.
    dir: tempfile::TempDir,
    /// The IMAP port on 127.0.0.1.
    port: u16,
    /// The master process (foreground mode), once started.
    child: Option<Child>,
    /// Owner of the files dovecot works on.
    uid: u32,
}

impl Dovecot {
    /// Starts dovecot with users `lp` and `del` (password `secret`), whose Maildirs hold
    /// `messages` (fixture names) for `lp`; plain IMAP, or with `tls` implicit TLS (IMAPS)
    /// with a certificate of a test CA, whose certificate is returned.
    fn start(messages: &[&str], tls: bool) -> (Dovecot, Option<PathBuf>) {
        assert!(
            Path::new(DOVECOT).exists(),
            "{DOVECOT} is missing: install Debian's dovecot-imapd (scripts/test-bridges2 does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let me = std::fs::metadata("/proc/self").expect("stat /proc/self");
        let (uid, gid) = if me.uid() == 0 {
            (NOBODY, NOBODY)
        } else {
            (me.uid(), me.gid())
        };
        let user = if uid == NOBODY {
            "nobody".to_owned()
        } else {
            std::env::var("USER").unwrap_or_else(|_| uid.to_string())
        };
        for sub in [
            "run",
            "state",
            "home",
            "mail/lp/cur",
            "mail/lp/new",
            "mail/lp/tmp",
        ] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join("mail/del").join(sub)).expect("mkdir");
        }
        std::fs::write(
            root.join("passwd"),
            "lp:{PLAIN}secret::::::\ndel:{PLAIN}secret::::::\n",
        )
        .expect("passwd");
        let port = free_port();
        let (plain_port, tls_port, ssl, ca) = if tls {
            let pki = transport_support::Pki::new(&root.join("pki"), "imap-ca");
            let server = pki.server("imap", "localhost");
            let ssl = format!(
                "ssl = required\nssl_cert = <{}\nssl_key = <{}\n",
                server.cert.display(),
                server.key.display()
            );
            (0, port, ssl, Some(pki.ca.clone()))
        } else {
            (port, 0, "ssl = no\n".to_owned(), None)
        };
        let r = root.display();
        let group = if uid == NOBODY {
            "default_internal_group = nogroup\n".to_owned()
        } else {
            String::new()
        };
        let conf = format!(
            "base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = {user}
default_internal_user = {user}
{group}mail_location = maildir:{r}/mail/%u
mailbox_idle_check_interval = 1 secs
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={r}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {plain_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
"
        );
        std::fs::write(root.join("dovecot.conf"), conf).expect("dovecot.conf");
        let mut dovecot = Dovecot {
            dir,
            port,
            child: None,
            uid,
        };
        for (i, name) in messages.iter().enumerate() {
            dovecot.deliver("lp", name, i);
        }
        chown_tree(dovecot.dir.path(), uid, gid);
        let mut cmd = Command::new(DOVECOT);
        cmd.args(["-F", "-c"])
            .arg(dovecot.dir.path().join("dovecot.conf"))
            .current_dir(dovecot.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if me.uid() == 0 {
            cmd.uid(uid).gid(gid);
        }
        dovecot.child = Some(cmd.spawn().expect("start dovecot"));
        let deadline = Instant::now() + common::TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen on 127.0.0.1:{port}; its log:\n{}",
                dovecot.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (dovecot, ca)
    }

    /// The Maildir of `user`.
    fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// Delivers fixture `name` into `user`'s Maildir the way an MDA does (`tmp/`, then a
    /// rename into `new/`).
    fn deliver(&self, user: &str, name: &str, n: usize) {
        let maildir = self.maildir(user);
        let file = format!("1764000000.M{n}P1.{}", name.replace('.', "_"));
        let tmp = maildir.join("tmp").join(&file);
        std::fs::write(&tmp, fixture(&format!("mail/{name}"))).expect("write message");
        let _ = std::os::unix::fs::chown(&tmp, Some(self.uid), None);
        std::fs::rename(&tmp, maildir.join("new").join(&file)).expect("deliver");
    }

    /// The files of `user`'s Maildir, as (file name, in `new/`).
    fn messages(&self, user: &str) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for (sub, new) in [("cur", false), ("new", true)] {
            for entry in std::fs::read_dir(self.maildir(user).join(sub)).expect("read maildir") {
                let name = entry.expect("entry").file_name();
                out.push((name.to_string_lossy().into_owned(), new));
            }
        }
        out.sort();
        out
    }

    /// Dovecot's log.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The master's children exit when it does; give them a moment before the dir goes.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free port on 127.0.0.1 (bound, then released for dovecot).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `chown -R uid:gid path`.
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&entry.expect("entry").path(), uid, gid);
        }
    }
}

/// Whether a Maildir file name carries the `S` (seen) flag.
fn seen(name: &str) -> bool {
    name.rsplit_once(":2,")
        .is_some_and(|(_, flags)| flags.contains('S'))
}

/// The bridge config for dovecot on `port`.
fn config(port: u16) -> String {
    format!(
        r#"
[[bridge.mail]]
name = "lpmail"
host = "127.0.0.1"
port = {port}
user = "lp"
password = "secret"
idle_secs = 3
backoff_initial_ms = 100
backoff_max_secs = 1

[[bridge.mail]]
name = "cleanup"
host = "127.0.0.1"
port = {port}
user = "del"
password = "secret"
on_processed = "delete"
idle_secs = 3
backoff_initial_ms = 100
backoff_max_secs = 1
"#
    )
}

/// Every mail event (`launchpad/...` and `mail/...`), as (topic, payload JSON), oldest first.
fn mail_events(node: &Node) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for filter in ["launchpad/#", "launchpad", "mail/#"] {
        for event in history(node.http, &format!("topic={}", enc(filter)), 200) {
            let id = event["id"].as_u64().unwrap_or_default();
            let topic = event["topic"].as_str().unwrap_or_default().to_owned();
            let payload = match &event["payload"] {
                Value::String(text) => serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("payload of {topic} is not JSON ({e}): {text}")),
                other => other.clone(),
            };
            out.push((id, topic, payload));
        }
    }
    out.sort_by_key(|(id, _, _)| *id);
    out.dedup_by_key(|(id, _, _)| *id);
    out.into_iter().map(|(_, t, p)| (t, p)).collect()
}

/// The bridge `name` in `/healthz?format=json`.
fn bridge_status(node: &Node, name: &str) -> Option<Value> {
    let health = http_json(node.http, "/healthz?format=json");
    health["bridges"]
        .as_array()?
        .iter()
        .find(|b| b["bridge"] == name)
        .cloned()
}

/// Waits until there are `n` mail events, and returns them.
fn wait_for_events(node: &Node, n: usize) -> Vec<(String, Value)> {
    wait_until(&format!("{n} mail events"), || {
        let events = mail_events(node);
        (events.len() >= n).then_some(events)
    })
}

const FIXTURES: [&str; 6] = [
    "lp-new-bug.eml",
    "lp-comment.eml",
    "lp-status-change.eml",
    "plain.eml",
    "malformed-multipart.eml",
    "garbage.eml",
];

#[test]
fn launchpad_and_other_mail_from_dovecot() {
    let (dovecot, _) = Dovecot::start(&FIXTURES, false);
    let dir = DataDir::standard(&config(dovecot.port));
    let node = dir.start();

    let events = wait_for_events(&node, FIXTURES.len());
    let topics: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "launchpad/nova/new/1987654",
            "launchpad/nova/comment/1987654",
            "launchpad/neutron/change/2001234",
            "mail/lpmail/example.org",
            "mail/lpmail/mailer.example.com",
            "mail/lpmail/malformed",
        ],
        "{events:#?}"
    );

    let new = &events[0].1;
    assert_eq!(new["project"], "nova");
    assert_eq!(new["status"], "New");
    assert_eq!(new["importance"], "Undecided");
    assert_eq!(new["assignee"], "None");
    assert_eq!(new["bug_number"], "1987654");
    assert_eq!(new["event_type"], "new");
    assert_eq!(new["tags"], "compute libvirt resize");
    assert_eq!(new["commenters"], serde_json::json!(["jdoe"]));
    assert_eq!(new["reporter"], "Jane Doe (jdoe)");
    assert_eq!(new["modifier"], "Jane Doe (jdoe)");
    assert_eq!(
        new["subject"],
        "[Bug 1987654] [NEW] Instance fails to boot after resize with libvirt 9.0"
    );
    let body = new["body"].as_str().expect("body");
    assert!(body.starts_with("Public bug reported:"), "{body}");
    assert!(
        body.contains("You received this bug notification"),
        "{body}"
    );

    let comment = &events[1].1;
    assert_eq!(comment["status"], "Confirmed");
    assert_eq!(comment["assignee"], "bsmith@example.org");
    assert_eq!(comment["commenters"], serde_json::json!(["bsmith", "jdoe"]));
    assert_eq!(comment["modifier"], "Bob Smith (bsmith)");
    assert_eq!(comment["tasks"][1]["distribution"], "ubuntu");
    assert!(
        comment["body"]
            .as_str()
            .expect("body")
            .contains("libvirt 9.0.0 \u{2014} the disk bus"),
        "quoted-printable decoded: {comment}"
    );

    let change = &events[2].1;
    assert_eq!(change["status"], "Fix Released");
    assert_eq!(change["assignee"], "Carol (carol)");

    let plain = &events[3].1;
    assert_eq!(plain["from"], "Ops Team <ops@Example.ORG>");
    assert_eq!(
        plain["to"],
        serde_json::json!(["firehose@example.org", "Alice <alice@example.net>"])
    );
    assert_eq!(plain["subject"], "Maintenance window tonight");
    assert_eq!(plain["date"], "2026-11-24T12:00:00+01:00");
    assert_eq!(plain["message_id"], "maint-2026-11-24@example.org");
    assert_eq!(
        plain["body"].as_str().map(str::trim_end),
        Some("The database cluster will be down from 22:00 to 23:00 UTC.")
    );
    assert_eq!(events[4].1["subject"], "attachment with no boundary");
    assert!(events[5].1["error"].is_string(), "{}", events[5].1);

    // Every message was marked seen once published; nothing is left in new/.
    let files = wait_until("every message marked seen", || {
        let files = dovecot.messages("lp");
        files
            .iter()
            .all(|(name, new)| !new && seen(name))
            .then_some(files)
    });
    assert_eq!(files.len(), FIXTURES.len());
    let status = wait_until("the bridge in IDLE, connected", || {
        bridge_status(&node, "lpmail").filter(|b| b["state"] == "connected")
    });
    assert_eq!(status["kind"], "mail");
    assert_eq!(status["rejected"], 2, "{status}");
    assert!(node.log().contains("malformed message"), "{}", node.log());

    // A message delivered while the bridge waits in IDLE (and across an IDLE re-issue).
    std::thread::sleep(Duration::from_secs(4));
    dovecot.deliver("lp", "lp-comment.eml", 100);
    let events = wait_for_events(&node, FIXTURES.len() + 1);
    assert_eq!(events[FIXTURES.len()].0, "launchpad/nova/comment/1987654");

    // on_processed = "delete": the message is gone from the mailbox once published.
    dovecot.deliver("del", "plain.eml", 200);
    wait_for_events(&node, FIXTURES.len() + 2);
    wait_until("the deleted message expunged", || {
        dovecot.messages("del").is_empty().then_some(())
    });

    // A restart publishes nothing twice: everything is seen (or gone) already.
    let status = node.terminate();
    assert!(status.success(), "{status}");
    let node = dir.start();
    wait_until("the bridges reconnected", || {
        let lp = bridge_status(&node, "lpmail")?;
        let del = bridge_status(&node, "cleanup")?;
        (lp["state"] == "connected" && del["state"] == "connected").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mail_events(&node).len(), FIXTURES.len() + 2);
    dovecot.deliver("lp", "lp-status-change.eml", 300);
    let events = wait_for_events(&node, FIXTURES.len() + 3);
    assert_eq!(events.len(), FIXTURES.len() + 3);
    assert_eq!(
        events[FIXTURES.len() + 2].0,
        "launchpad/neutron/change/2001234"
    );
    let lp = bridge_status(&node, "lpmail").expect("lpmail status");
    assert_eq!(lp["events_in"], 1, "{lp}");
    assert_eq!(lp["errors"], 0, "{lp}");
    assert!(
        dovecot.log().contains("Login: user=<lp>"),
        "{}",
        dovecot.log()
    );
}

#[test]
fn unreachable_server_is_retried_with_backoff() {
    // Nothing listens on the port at first: the bridge keeps retrying, then connects.
    let port = free_port();
    let dir = DataDir::standard(&config(port));
    let node = dir.start();
    wait_until("a failed connection counted", || {
        bridge_status(&node, "lpmail").filter(|b| b["errors"].as_u64() >= Some(2))
    });
    let status = bridge_status(&node, "lpmail").expect("status");
    assert_eq!(status["connected"], false);
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{status}"
    );
    drop(node);
}

#[test]
fn implicit_tls_with_a_private_ca() {
    let (dovecot, ca) = Dovecot::start(&["lp-new-bug.eml"], true);
    let ca = ca.expect("CA certificate");
    let config = format!(
        r#"
[[bridge.mail]]
name = "lpmail"
host = "127.0.0.1"
port = {}
tls = true
ca_file = "{}"
user = "lp"
password = "secret"
"#,
        dovecot.port,
        ca.display()
    );
    let dir = DataDir::standard(&config);
    let node = dir.start();
    let events = wait_for_events(&node, 1);
    assert_eq!(events[0].0, "launchpad/nova/new/1987654");
    wait_until("the message marked seen", || {
        let files = dovecot.messages("lp");
        files
            .iter()
            .all(|(name, new)| !new && seen(name))
            .then_some(())
    });
    assert!(
        dovecot
            .log()
            .contains("Login: user=<lp>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1")
            && dovecot.log().contains("TLS"),
        "{}",
        dovecot.log()
    );
}

/// A scripted IMAP server on a free loopback port, for what dovecot does not do: it answers
/// every session with one unseen message (UID 7) whose `UID FETCH` comes back without the
/// message's body, and records the commands it was sent.
fn imap_without_bodies() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = commands.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = stream.write_all(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let command = line.trim_end().to_owned();
                    line.clear();
                    let (tag, rest) = command.split_once(' ').unwrap_or((&command, ""));
                    let verb = rest.to_ascii_uppercase();
                    seen.lock().expect("commands").push(verb.clone());
                    let answer = if verb.starts_with("SELECT") {
                        format!("* 1 EXISTS\r\n* 1 RECENT\r\n{tag} OK [READ-WRITE] selected\r\n")
                    } else if verb.starts_with("UID SEARCH") {
                        format!("* SEARCH 7\r\n{tag} OK searched\r\n")
                    } else if verb.starts_with("UID FETCH") {
                        format!("* 1 FETCH (UID 7 FLAGS ())\r\n{tag} OK fetched\r\n")
                    } else if verb.starts_with("IDLE") {
                        "+ idling\r\n".to_owned()
                    } else if verb == "DONE" {
                        continue;
                    } else {
                        format!("{tag} OK done\r\n")
                    };
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, commands)
}

/// A message the server lists as unseen but sends without its body is neither published nor
/// skipped in silence: each pass reports it (an error of the bridge, with the UID), and it is
/// left unseen for the next pass.
#[test]
fn a_message_fetched_without_its_body_is_reported() {
    let (port, commands) = imap_without_bodies();
    let config = format!(
        "[[bridge.mail]]\nname = \"lpmail\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         user = \"lp\"\npassword = \"secret\"\nidle_secs = 3\n"
    );
    let dir = DataDir::standard(&config);
    let node = dir.start();
    let status = wait_until("the missing body reported", || {
        bridge_status(&node, "lpmail").filter(|b| b["errors"].as_u64() >= Some(1))
    });
    assert_eq!(status["events_in"], 0, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("UID 7 without its body")),
        "{status}"
    );
    let commands = commands.lock().expect("commands").clone();
    assert!(
        commands.iter().all(|c| !c.contains("STORE")),
        "never marked: {commands:?}"
    );
    assert!(node.log().contains("left unseen"), "{}", node.log());
}
