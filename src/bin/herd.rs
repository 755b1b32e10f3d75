//! `herd`: run N copies of a program behind one address (see
//! [`herd::cli`]).

fn main() -> std::process::ExitCode {
    herd::cli::herd()
}
