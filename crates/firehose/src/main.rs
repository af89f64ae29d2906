//! The `firehose` binary: everything is in [`firehose::cli`].

/// See the `mimalloc` entry in Cargo.toml for why the process does not use glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    firehose::cli::main()
}
