//! Running the `firehose` command line in tests: a clean environment, and `firehose sub` with
//! its output lines on a channel. Shared by the `sub`/`pub` tests over every transport.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;

use serde_json::Value;

use super::{firehose_bin, wait_with_timeout, TIMEOUT};

/// The `firehose` binary, without the `FIREHOSE_*` variables of the test's own environment.
pub(crate) fn firehose() -> Command {
    let mut cmd = Command::new(firehose_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FIREHOSE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Starts `cmd` with its stdout lines on a channel (read by a thread of their own), stdin
/// closed and stderr passed through; `what` names it in the panic if it cannot start.
pub(crate) fn spawn_with_lines(mut cmd: Command, what: &str) -> (Child, Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// A running `firehose sub` whose stdout lines arrive on a channel.
pub(crate) struct Sub {
    child: Child,
    lines: Receiver<String>,
}

impl Sub {
    /// Starts `firehose sub ARGS...`.
    pub(crate) fn start(args: &[&str]) -> Sub {
        let mut cmd = firehose();
        cmd.arg("sub").args(args);
        let (child, lines) = spawn_with_lines(cmd, "firehose sub");
        Sub { child, lines }
    }

    /// The next `n` lines as JSON.
    pub(crate) fn events(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                let line = self
                    .lines
                    .recv_timeout(TIMEOUT)
                    .unwrap_or_else(|_| panic!("sub printed {i} lines of {n} within {TIMEOUT:?}"));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Waits (bounded) for the command to exit, which must be a success.
    pub(crate) fn wait_success(&mut self) {
        let status = wait_with_timeout(&mut self.child, TIMEOUT, "firehose sub");
        assert!(status.success(), "firehose sub exited with {status}");
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
