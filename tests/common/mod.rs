//! Test harness: runs the `cluster` example as a real master process,
//! captures what it logs, talks HTTP to it, and kills every process it
//! started when the test ends, pass or fail.
//!
//! One file per role: `master.rs` (the master process and its events),
//! `http.rs` (requests), `load.rs` (load and reloads under load),
//! `events.rs` (reading events), `processes.rs` (pids, guards),
//! `herdctl.rs` (the control socket), `library.rs` (clusters run in the
//! test process). This file: where programs and
//! fixtures are, and command lines.
#![allow(dead_code)]

mod events;
mod herdctl;
mod http;
mod library;
mod load;
mod master;
mod processes;

// Each test binary uses some of the helpers.
#[allow(unused_imports)]
pub use {events::*, herdctl::*, http::*, library::*, load::*, master::*, processes::*};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound for anything a test waits for; generous because CI machines
/// are shared and slow, never a performance assertion.
pub const WAIT: Duration = Duration::from_secs(20);
/// Socket timeout for one HTTP exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples \
         (`cargo test --test X` does not: run `cargo build --examples` first)",
        p.display()
    );
    p
}

pub fn hello() -> String {
    example("hello").display().to_string()
}

pub fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

pub fn node_server() -> Vec<String> {
    vec!["node".into(), fixture("examples/node/server.js")]
}

/// uvicorn from the distribution (`apt-get install python3-uvicorn`): the
/// `python3` that can import it (a pyenv `python3` first on PATH may not).
pub fn uvicorn_server() -> Vec<String> {
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import uvicorn"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("uvicorn is not installed: apt-get install python3-uvicorn");
    let dir = fixture("tests/fixtures");
    s(&[
        "sh",
        "-c",
        &format!(
            "exec {python} -m uvicorn --app-dir {dir} uvicorn_app:app --host 127.0.0.1 \
             --port \"$PORT\" --lifespan off --no-access-log"
        ),
    ])
}

pub fn hello_server() -> Vec<String> {
    vec![hello()]
}

/// Where `program` is on PATH, if it is installed.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A loopback port that is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A master on a kernel-chosen loopback port: `-l 127.0.0.1:0`, then
/// `extra`, then `program`.
pub fn cmd(extra: &[&str], program: &[String]) -> Vec<String> {
    let mut v = s(&["-l", "127.0.0.1:0"]);
    v.extend(s(extra));
    v.extend(program.iter().cloned());
    v
}

/// Options then program: `args(&["-w", "2"], &program)`.
pub fn args(opts: &[&str], program: &[String]) -> Vec<String> {
    let mut a = s(opts);
    a.extend(program.iter().cloned());
    a
}
