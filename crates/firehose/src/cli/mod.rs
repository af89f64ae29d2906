//! The `firehose` command line: `serve` runs the broker, `passwd` hashes a password for the
//! users file, `replay` prints history from a server's HTTP API. The only module that wires transports to the broker; `anyhow` lives here.

mod event_filter;
mod http_client;
mod mqtt_client;
mod net;
pub mod passwd;
mod publish;
mod replay;
mod serve;
mod sub;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Firehose: one place to consume every event of an infrastructure.
///
/// An MQTT 3.1.1 and 5.0 broker in which anyone may subscribe and only authenticated publishers
/// may publish, each within its own topics.
#[derive(Debug, Parser)]
#[command(name = "firehose", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info` or `firehose=debug`); RUST_LOG works too.
    #[arg(long, global = true, env = "FIREHOSE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Read a password on stdin and print its argon2id hash for the users file.
    Passwd(passwd::PasswdArgs),
    /// Print the history of topics as JSON lines (from a server's HTTP API), then optionally
    /// follow live.
    Replay(replay::ReplayArgs),
    /// Subscribe over MQTT or Server-Sent Events: print events as JSON lines, or run a command
    /// per event, resuming after a restart exactly where the last run stopped.
    Sub(sub::SubArgs),
    /// Publish one message over MQTT; exit status 1 with the reason when it is refused.
    Pub(publish::PubArgs),
}

/// Runs the command line and turns any error into a message on stderr and exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&cli.log).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        // Every field and message escaped: peers choose client ids, topics and user names.
        .fmt_fields(crate::escape::LogFields)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Passwd(args) => passwd::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Sub(args) => sub::run(args),
        Command::Pub(args) => publish::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            say(format_args!("firehose: error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Prints a line on stderr with its control characters escaped ([`crate::escape`]): the line
/// may quote what a server sent (a reason string, an error page, an event that is not JSON),
/// which must not drive the terminal or pose as more lines.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    eprintln!("{}", crate::escape::escape(&line.to_string()));
}
