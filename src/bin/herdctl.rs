//! `herdctl`: operate running herd masters (see [`herd::cli`]).

fn main() -> std::process::ExitCode {
    herd::cli::herdctl()
}
