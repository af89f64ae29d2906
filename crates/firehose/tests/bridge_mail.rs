//! The mail bridge against a real IMAP server: Debian's dovecot, started by the test as an
//! unprivileged process on a free loopback port with its own config (passwd-file users with
//! plain passwords, Maildir in a temp dir, no SSL). Fixture messages modelled on Launchpad's
//! notifications (bug mail of every kind, a merge proposal, a forged one), ordinary mail and
//! malformed MIME are delivered into the Maildir; the tests check the events against lpmqtt's
//! rules and the served JSON Schemas, what is dropped and counted, the `\Seen` flags dovecot
//! stores (in the Maildir file names), a message delivered while the bridge is in IDLE,
//! `on_processed = "delete"`, `publish_other_mail`, `sender_domains`, and that a restart of
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

use serde_json::{json, Value};

use bridge_support::{fixture, schema, wait_until};
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

/// One `[[bridge.mail]]` table for dovecot on `port`, IMAP user `user`, with `extra` settings.
fn bridge_toml(name: &str, port: u16, user: &str, extra: &str) -> String {
    format!(
        r#"
[[bridge.mail]]
name = "{name}"
host = "127.0.0.1"
port = {port}
user = "{user}"
password = "secret"
idle_secs = 3
backoff_initial_ms = 100
backoff_max_secs = 1
{extra}
"#
    )
}

/// The bridge config for dovecot on `port`: `lpmail` reads user `lp` with the defaults
/// (Launchpad's mail only); `cleanup` reads user `del`, publishes other mail too and deletes
/// what it processed.
fn config(port: u16) -> String {
    bridge_toml("lpmail", port, "lp", "")
        + &bridge_toml(
            "cleanup",
            port,
            "del",
            "on_processed = \"delete\"\npublish_other_mail = true",
        )
}

/// Every mail event (`launchpad/...` and `mail/...`), as (topic, payload JSON, publisher),
/// oldest first.
fn mail_events_by(node: &Node) -> Vec<(String, Value, String)> {
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
            let publisher = event["publisher"].as_str().unwrap_or_default().to_owned();
            out.push((id, topic, payload, publisher));
        }
    }
    out.sort_by_key(|(id, ..)| *id);
    out.dedup_by_key(|(id, ..)| *id);
    out.into_iter().map(|(_, t, p, by)| (t, p, by)).collect()
}

/// Every mail event, as (topic, payload JSON), oldest first.
fn mail_events(node: &Node) -> Vec<(String, Value)> {
    mail_events_by(node)
        .into_iter()
        .map(|(t, p, _)| (t, p))
        .collect()
}

/// Checks every mail event against the schema the node serves for its family.
fn assert_events_match_schemas(node: &Node) {
    let launchpad = schema::served(node.http, "launchpad");
    let mail = schema::served(node.http, "mail");
    for (topic, payload) in mail_events(node) {
        let family = if topic.starts_with("launchpad") {
            &launchpad
        } else {
            &mail
        };
        schema::assert_valid(family, &payload, &topic);
    }
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

/// Waits until every message of `user`'s mailbox is marked seen.
fn wait_all_seen(dovecot: &Dovecot, user: &str) -> Vec<(String, bool)> {
    wait_until(&format!("every message of {user} marked seen"), || {
        let files = dovecot.messages(user);
        files
            .iter()
            .all(|(name, new)| !new && seen(name))
            .then_some(files)
    })
}

/// Launchpad's notifications of every kind, and mail that is not Launchpad's.
const FIXTURES: [&str; 8] = [
    "lp-new-bug.eml",
    "lp-comment.eml",
    "lp-status-change.eml",
    "lp-distro-task.eml",
    "lp-merge-proposal.eml",
    "plain.eml",
    "malformed-multipart.eml",
    "garbage.eml",
];

/// What the fixtures publish by default: Launchpad's five; the other three are dropped.
const PUBLISHED: usize = 5;

/// The mail bridge publishes Launchpad's notifications exactly as lpmqtt did (its keys, its
/// values, still transfer-encoded bodies, its topics filled left to right), with Firehose's
/// additions under keys of their own, and nothing else unless asked: mail that is not from
/// Launchpad is dropped, counted and marked, not published.
#[test]
fn launchpad_mail_as_lpmqtt_published_it() {
    let (dovecot, _) = Dovecot::start(&FIXTURES, false);
    let dir = DataDir::standard(&config(dovecot.port));
    let node = dir.start();

    let events = wait_for_events(&node, PUBLISHED);
    let topics: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "launchpad/nova/bug/1987654",
            "launchpad/nova/bug/1987654",
            "launchpad/neutron/bug/2001234",
            // The first task is Ubuntu's: no product, so no project and no further level.
            "launchpad",
            // Not a bug notification.
            "launchpad",
        ],
        "{events:#?}"
    );

    let new = &events[0].1;
    assert_eq!(new["event-type"], "bug");
    assert_eq!(new["project"], "nova");
    assert_eq!(new["status"], "New");
    assert_eq!(new["importance"], "Undecided");
    assert_eq!(new["assignee"], "None");
    assert_eq!(new["bug-number"], "1987654");
    assert_eq!(new["tags"], json!(["compute", "libvirt", "resize"]));
    assert_eq!(new["commenters"], json!(["jdoe"]));
    assert_eq!(new["bug-reporter"], "Jane Doe (jdoe)");
    assert_eq!(new["bug-modifier"], "Jane Doe (jdoe)");
    assert!(new.get("product").is_none(), "{new}");
    // lpmqtt's body: as the message carried it, quoted-printable, CRLF line ends.
    let body = new["body"].as_str().expect("body");
    assert!(body.starts_with("Public bug reported:\r\n\r\n"), "{body:?}");
    assert!(body.contains("\r\n--=20\r\nYou received"), "{body:?}");
    // Firehose's additions.
    assert_eq!(new["bug-event"], "new");
    assert_eq!(
        new["subject"],
        "[Bug 1987654] [NEW] Instance fails to boot after resize with libvirt 9.0"
    );
    assert_eq!(new["date"], "2026-11-24T09:12:45Z");
    assert_eq!(
        new["message-id"],
        "176397556554.1201.5000000000000000001.malonedeb@juju-98d295-prod-launchpad-7"
    );
    let text = new["body-text"].as_str().expect("body-text");
    assert!(
        text.contains("\n-- \nYou received this bug notification"),
        "{text:?}"
    );
    assert_eq!(
        new["tasks"],
        json!([{"project": "nova", "status": "New", "importance": "Undecided", "assignee": "None"}])
    );

    let comment = &events[1].1;
    assert_eq!(comment["status"], "Confirmed");
    assert_eq!(comment["assignee"], "bsmith@example.org");
    assert_eq!(comment["commenters"], json!(["bsmith", "jdoe"]));
    assert_eq!(comment["bug-modifier"], "Bob Smith (bsmith)");
    assert_eq!(comment["bug-event"], "comment");
    assert!(
        comment.get("distribution").is_none(),
        "lpmqtt read the first task only"
    );
    assert_eq!(comment["tasks"][1]["distribution"], "ubuntu");
    assert!(
        comment["body"]
            .as_str()
            .expect("body")
            .contains("9.0.0 =E2=80=94 the disk bus"),
        "still quoted-printable: {comment}"
    );
    assert!(
        comment["body-text"]
            .as_str()
            .expect("body-text")
            .contains("libvirt 9.0.0 \u{2014} the disk bus"),
        "decoded: {comment}"
    );

    let change = &events[2].1;
    assert_eq!(change["status"], "Fix Released");
    assert_eq!(change["assignee"], "Carol (carol)");
    assert_eq!(change["tags"], json!(["ovs"]));
    assert_eq!(change["bug-event"], "change");
    // Raw as lpmqtt had it (an RFC 2047 word), but unfolded.
    assert_eq!(
        change["bug-modifier"],
        "=?utf-8?q?Jos=C3=A9_Garc=C3=ADa_=28jgarcia?=\t=?utf-8?q?=29?="
    );
    assert!(change["body"]
        .as_str()
        .expect("body")
        .contains("Fix Committed =3D> Fix Released"));
    assert!(change["body-text"]
        .as_str()
        .expect("text")
        .contains("Fix Committed => Fix Released"));

    let distro = &events[3].1;
    assert!(distro.get("project").is_none(), "{distro}");
    assert_eq!(distro["distribution"], "ubuntu");
    assert_eq!(distro["sourcepackage"], "nova");
    assert_eq!(distro["bug-number"], "2004321");
    assert_eq!(distro["tasks"][1]["project"], "nova");

    let review = &events[4].1;
    assert_eq!(review["X-Launchpad-Notification-Type"], "code-review");
    assert_eq!(review["X-Launchpad-Project"], "nova");
    assert_eq!(
        review["X-Launchpad-Branch"],
        "~jdoe/nova/+git/nova:fix-resize"
    );
    assert_eq!(
        review["X-Launchpad-Message-Rationale"],
        "Reviewer @nova-core"
    );
    assert!(review.get("event-type").is_none() && review.get("bug-event").is_none());
    // A multipart body (lpmqtt died on it): the whole MIME body, boundaries and all.
    let body = review["body"].as_str().expect("body");
    assert!(
        body.starts_with("--===============1184403571296547361==\r\n"),
        "{body:?}"
    );
    assert!(body.contains("+        bus = 'virtio'\r\n"), "{body:?}");
    assert!(review["body-text"]
        .as_str()
        .expect("text")
        .starts_with("Jane Doe has proposed merging"));
    assert_events_match_schemas(&node);

    // Every message was marked seen, the three that are not Launchpad's too (dropped once).
    let files = wait_all_seen(&dovecot, "lp");
    assert_eq!(files.len(), FIXTURES.len());
    let status = wait_until("the bridge in IDLE, connected", || {
        bridge_status(&node, "lpmail").filter(|b| b["state"] == "connected")
    });
    assert_eq!(status["kind"], "mail");
    assert_eq!(status["rejected"], 3, "{status}");
    assert_eq!(status["events_in"], PUBLISHED, "{status}");
    assert!(
        node.log().contains("mail dropped, not published"),
        "{}",
        node.log()
    );
    assert!(
        !node.log().contains("Maintenance window"),
        "no mail text logged"
    );

    // A message delivered while the bridge waits in IDLE (and across an IDLE re-issue).
    std::thread::sleep(Duration::from_secs(4));
    dovecot.deliver("lp", "lp-comment.eml", 100);
    let events = wait_for_events(&node, PUBLISHED + 1);
    assert_eq!(events[PUBLISHED].0, "launchpad/nova/bug/1987654");

    // publish_other_mail = true, on_processed = "delete": other mail is published, malformed
    // bytes best effort, and each message is gone from the mailbox once published.
    dovecot.deliver("del", "plain.eml", 200);
    dovecot.deliver("del", "garbage.eml", 201);
    let events = wait_for_events(&node, PUBLISHED + 3);
    assert_eq!(events[PUBLISHED + 1].0, "mail/cleanup/example.org");
    assert_eq!(events[PUBLISHED + 2].0, "mail/cleanup/malformed");
    let plain = &events[PUBLISHED + 1].1;
    assert_eq!(plain["from"], "Ops Team <ops@Example.ORG>");
    assert_eq!(
        plain["to"],
        json!(["firehose@example.org", "Alice <alice@example.net>"])
    );
    assert_eq!(plain["subject"], "Maintenance window tonight");
    assert_eq!(plain["date"], "2026-11-24T12:00:00+01:00");
    assert_eq!(plain["message_id"], "maint-2026-11-24@example.org");
    assert_eq!(
        plain["body"].as_str().map(str::trim_end),
        Some("The database cluster will be down from 22:00 to 23:00 UTC.")
    );
    assert!(
        events[PUBLISHED + 2].1["error"].is_string(),
        "{}",
        events[PUBLISHED + 2].1
    );
    wait_until("the deleted messages expunged", || {
        dovecot.messages("del").is_empty().then_some(())
    });
    assert_events_match_schemas(&node);

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
    assert_eq!(mail_events(&node).len(), PUBLISHED + 3);
    dovecot.deliver("lp", "lp-status-change.eml", 300);
    let events = wait_for_events(&node, PUBLISHED + 4);
    assert_eq!(events.len(), PUBLISHED + 4);
    assert_eq!(events[PUBLISHED + 3].0, "launchpad/neutron/bug/2001234");
    let lp = bridge_status(&node, "lpmail").expect("lpmail status");
    assert_eq!(lp["events_in"], 1, "{lp}");
    assert_eq!(lp["errors"], 0, "{lp}");
    assert_eq!(lp["rejected"], 0, "nothing dropped twice: {lp}");
    assert!(
        dovecot.log().contains("Login: user=<lp>"),
        "{}",
        dovecot.log()
    );
}

/// `sender_domains` narrows what is considered to mail from those domains (and their
/// subdomains), Launchpad's included, by the From header; without it, anyone who writes
/// Launchpad's headers is published: the check is a filter, not authentication.
#[test]
fn sender_domains_narrow_what_is_considered() {
    let fixtures = [
        "lp-new-bug.eml",
        "lp-forged.eml",
        "plain.eml",
        "malformed-multipart.eml",
        "garbage.eml",
        "lp-merge-proposal.eml",
    ];
    let (dovecot, _) = Dovecot::start(&fixtures, false);
    dovecot.deliver("del", "lp-forged.eml", 10);
    let config = bridge_toml(
        "narrow",
        dovecot.port,
        "lp",
        "publish_other_mail = true\nsender_domains = [\"launchpad.net\", \"Example.org\"]",
    ) + &bridge_toml("open", dovecot.port, "del", "");
    let dir = DataDir::standard(&config);
    let node = dir.start();

    let events = wait_until("both mailboxes read", || {
        let events = mail_events_by(&node);
        (events.len() >= 4).then_some(events)
    });
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|(t, _, by)| (t.as_str(), by.as_str()))
        .collect();
    let narrow: Vec<&str> = got
        .iter()
        .filter(|(_, by)| *by == "bridge:narrow")
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        narrow,
        [
            "launchpad/nova/bug/1987654",
            "mail/narrow/example.org",
            "launchpad"
        ],
        "{got:?}"
    );
    // The forged notification is published where no domain is required.
    let open: Vec<&str> = got
        .iter()
        .filter(|(_, by)| *by == "bridge:open")
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(open, ["launchpad/nova/bug/1"], "{got:?}");
    assert_events_match_schemas(&node);
    wait_all_seen(&dovecot, "lp");
    let status = bridge_status(&node, "narrow").expect("status");
    assert_eq!(
        status["rejected"], 3,
        "forged, mailer.example.com, garbage: {status}"
    );
    assert!(
        node.log()
            .contains("launchpad-security.example.net) is not in sender_domains"),
        "{}",
        node.log()
    );
    assert_eq!(mail_events(&node).len(), 4, "nothing else was published");
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
    assert_eq!(events[0].0, "launchpad/nova/bug/1987654");
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
