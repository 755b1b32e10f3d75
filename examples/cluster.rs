//! `cluster`: the `herd` command as an example, so that
//! `cargo run --release --example cluster -- node server.js` runs it from a
//! checkout without installing anything. The code is [`herd::cli`].

fn main() -> std::process::ExitCode {
    herd::cli::herd()
}
