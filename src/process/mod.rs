//! OS effects for worker processes: spawn, reap, signal, capture output.
//!
//! One mechanism per file: [`spawn`] forks and execs with the fd contract,
//! [`spawner`] owns the long-lived thread every fork happens on, [`reap`]
//! waits for exactly one child through its pidfd, [`output`] turns worker
//! output into prefixed lines.

pub(crate) mod output;
pub(crate) mod reap;
pub(crate) mod spawn;
pub(crate) mod spawner;

use std::fmt;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(Signal),
}

impl Exit {
    /// True for `exit(0)`: the only end the `on-failure` policy leaves alone.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "was killed by {}", s.as_str()),
        }
    }
}

/// Sends `sig` to the worker's whole process group (the worker is its
/// leader). A group that is already gone is not an error.
pub(crate) fn signal_group(pid: Pid, sig: Signal) {
    let _ = signal::killpg(pid, sig);
}
