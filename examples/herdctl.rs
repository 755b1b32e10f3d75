//! `herdctl` as an example: `cargo run --example herdctl -- ls`. The code
//! is [`herd::cli`].

fn main() -> std::process::ExitCode {
    herd::cli::herdctl()
}
