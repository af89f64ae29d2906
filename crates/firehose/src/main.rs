//! The `firehose` binary: everything is in [`firehose::cli`].

fn main() -> std::process::ExitCode {
    firehose::cli::main()
}
