//! `firehose passwd`: reads a password and prints its argon2id hash, ready to paste as the
//! `password` of a `[[user]]` in the users file.
//!
//! Depends on [`crate::auth`] only. The password is never taken from the command line, where
//! `ps` and shell history would show it: from a terminal it is prompted for twice without echo;
//! otherwise it is the first line of stdin (`printf '%s\n' "$PW" | firehose passwd`).

use std::io::{self, BufRead, IsTerminal, Read, Write};

use anyhow::{bail, Context};

/// The longest password worth hashing: an MQTT CONNECT carries at most 65535 bytes of password,
/// so a longer one could never log in.
const MAX_PASSWORD_LEN: usize = 65_535;

/// Options of `firehose passwd`. None so far: where the password comes from is decided by
/// whether stdin is a terminal.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PasswdArgs {}

/// Runs `firehose passwd`: reads the password, prints its hash and a newline on stdout (and
/// nothing else there, so that `$(firehose passwd)` captures just the hash).
///
/// # Errors
/// The password is empty, too long, missing, or typed differently twice; stdin or stdout fails.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    let PasswdArgs {} = args;
    let stdin = io::stdin();
    let password = if stdin.is_terminal() {
        let echo = EchoOff::new();
        if !echo.is_off() {
            eprintln!("warning: cannot turn off echo: the password will be visible as you type");
        }
        prompt_twice(&mut stdin.lock(), &mut io::stderr(), echo.is_off())?
    } else {
        read_password_line(&mut stdin.lock())?
    };
    let hash = crate::auth::hash_password(&password)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{hash}").context("cannot write the hash to stdout")?;
    stdout.flush().context("cannot write the hash to stdout")?;
    Ok(())
}

/// Reads the password as the first line of `input` (a pipe or file), without its line ending
/// (`\n` or `\r\n`).
///
/// # Errors
/// `input` is empty, the line is empty or longer than an MQTT password can be, or reading fails.
fn read_password_line(input: &mut impl BufRead) -> anyhow::Result<Vec<u8>> {
    match read_line(input)? {
        Some(password) => check(password),
        None => bail!(
            "no password on stdin: pipe it as one line, e.g. printf '%s\\n' \"$PASSWORD\" | \
             firehose passwd"
        ),
    }
}

/// Prompts for the password on `prompts` (stderr, so that stdout holds only the hash) and reads
/// it twice from `input`, to catch typing mistakes nobody could see.
///
/// `echo_off`: the terminal does not echo, so the newline the user types must be written out.
///
/// # Errors
/// The password is empty or too long, the two entries differ, or input ends early.
fn prompt_twice(
    input: &mut impl BufRead,
    prompts: &mut impl Write,
    echo_off: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut ask = |prompt: &str| -> anyhow::Result<Vec<u8>> {
        write!(prompts, "{prompt}")?;
        prompts.flush()?;
        let line = read_line(input)?;
        if echo_off {
            writeln!(prompts)?;
        }
        line.context("no password given (input ended)")
    };
    let first = check(ask("Password: ")?)?;
    let second = ask("Repeat: ")?;
    if first != second {
        bail!("the two passwords differ; nothing was hashed, try again");
    }
    Ok(first)
}

/// Reads one line without its line ending; `None` at end of input. Reads at most a little more
/// than [`MAX_PASSWORD_LEN`], so that a huge input without newlines cannot fill memory.
fn read_line(input: &mut impl BufRead) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_PASSWORD_LEN + 3).unwrap_or(u64::MAX);
    let read = input
        .take(limit)
        .read_until(b'\n', &mut line)
        .context("cannot read the password from stdin")?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(line))
}

/// Refuses passwords that would be useless.
fn check(password: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if password.is_empty() {
        bail!("empty password: refusing to hash it (anyone could log in with no password)");
    }
    if password.len() > MAX_PASSWORD_LEN {
        bail!(
            "password too long: MQTT carries at most {MAX_PASSWORD_LEN} bytes of password, so \
             this one could never log in"
        );
    }
    Ok(password)
}

/// Turns terminal echo off while it lives, with `stty` (no dependency and no `unsafe` needed);
/// restores it on drop, including on error. If the process is killed while the prompt is up,
/// `stty echo` (or `reset`) restores the terminal.
struct EchoOff {
    /// Whether `stty -echo` succeeded, so echo must be turned back on.
    off: bool,
}

impl EchoOff {
    /// Tries to turn echo off on the terminal that is stdin.
    fn new() -> EchoOff {
        EchoOff { off: stty("-echo") }
    }

    /// Whether echo is off.
    fn is_off(&self) -> bool {
        self.off
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.off && !stty("echo") {
            eprintln!("warning: cannot turn echo back on; run `stty echo`");
        }
    }
}

/// Runs `stty <setting>` on the terminal that is our stdin; whether it succeeded.
#[cfg(unix)]
fn stty(setting: &str) -> bool {
    std::process::Command::new("stty")
        .arg(setting)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// No `stty` outside Unix: echo stays on (and [`run`] says so).
#[cfg(not(unix))]
fn stty(_setting: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(input: &[u8]) -> anyhow::Result<Vec<u8>> {
        read_password_line(&mut &input[..])
    }

    #[test]
    fn reads_first_line_without_its_ending() {
        assert_eq!(line(b"s3cret\n").expect("ok"), b"s3cret");
        assert_eq!(line(b"s3cret").expect("ok"), b"s3cret");
        assert_eq!(line(b"s3cret\r\n").expect("ok"), b"s3cret");
        assert_eq!(
            line(b"two words \nsecond line\n").expect("ok"),
            b"two words "
        );
        assert_eq!(line(b"\xff\xfe binary\n").expect("ok"), b"\xff\xfe binary");
    }

    #[test]
    fn refuses_empty_missing_or_oversized_passwords() {
        let message = |input: &[u8]| line(input).expect_err("refused").to_string();
        assert!(message(b"\n").starts_with("empty password"));
        assert!(message(b"\r\n").starts_with("empty password"));
        assert!(message(b"").starts_with("no password on stdin"));
        let long = vec![b'x'; MAX_PASSWORD_LEN + 1];
        assert!(message(&long).starts_with("password too long"));
        let longest = vec![b'x'; MAX_PASSWORD_LEN];
        assert_eq!(
            line(&longest).expect("longest accepted").len(),
            MAX_PASSWORD_LEN
        );
    }

    #[test]
    fn prompts_twice_on_the_prompt_stream() {
        let mut prompts = Vec::new();
        let password =
            prompt_twice(&mut &b"s3cret\ns3cret\n"[..], &mut prompts, true).expect("same twice");
        assert_eq!(password, b"s3cret");
        assert_eq!(prompts, b"Password: \nRepeat: \n");

        let mut prompts = Vec::new();
        prompt_twice(&mut &b"a\na\n"[..], &mut prompts, false).expect("same twice");
        assert_eq!(prompts, b"Password: Repeat: ");
    }

    #[test]
    fn prompt_refuses_mismatch_empty_and_eof() {
        let error = |input: &[u8]| {
            prompt_twice(&mut &input[..], &mut Vec::new(), true)
                .expect_err("refused")
                .to_string()
        };
        assert!(error(b"s3cret\ns3cre\n").starts_with("the two passwords differ"));
        assert!(error(b"\n\n").starts_with("empty password"));
        assert!(error(b"s3cret\n").starts_with("no password given"));
        assert!(error(b"").starts_with("no password given"));
    }

    #[test]
    fn hash_of_read_password_verifies() {
        let password = line(b"s3cret\n").expect("ok");
        let hash = crate::auth::hash_password(&password).expect("hash");
        let users = crate::auth::Users::parse(&format!(
            "[[user]]\nname = \"a\"\npassword = \"{hash}\"\npublish = [\"a/#\"]\n"
        ))
        .expect("users file with the new hash");
        let who = users
            .authenticate(Some("a"), Some(b"s3cret"))
            .expect("logs in");
        assert_eq!(who.name(), "a");
    }
}
