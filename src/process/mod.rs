//! OS effects for worker processes: spawn, reap, signal, capture output.
//!
//! One mechanism per file: [`spawn`] forks and execs with the fd contract,
//! [`cgroup`] keeps each worker's tree in a cgroup it cannot leave,
//! [`contract`] says what a worker finds in its environment,
//! [`spawner`] owns the long-lived thread every fork happens on, [`os`] is
//! the supervisor's seam to all of them (a fake in its tests), [`reap`]
//! waits for exactly one child through its pidfd, [`output`] turns worker
//! output into prefixed lines.

pub(crate) mod cgroup;
pub(crate) mod contract;
pub(crate) mod os;
pub(crate) mod output;
pub(crate) mod reap;
pub(crate) mod sentinel;
pub(crate) mod spawn;
pub(crate) mod spawner;
pub(crate) mod usage;

use std::fmt;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Exit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(crate::Signal),
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
            Exit::Signal(s) => write!(f, "was killed by {s}"),
        }
    }
}

/// Which of a worker's processes the stop signal reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KillMode {
    /// The worker's main process only (for a Node app started by a launcher
    /// such as `npm start`, the process that runs the app). What else runs
    /// in its process group (a `sleep`, `ffmpeg` or CGI a request started)
    /// gets SIGKILL once the main process has exited, or at the drain
    /// timeout: systemd's `KillMode=mixed`.
    #[default]
    Mixed,
    /// The worker's whole process group at once: systemd's
    /// `KillMode=control-group`. Children that a request started are
    /// stopped with it, so that request fails.
    Group,
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KillMode::Mixed => "mixed",
            KillMode::Group => "group",
        })
    }
}

impl std::str::FromStr for KillMode {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mixed" => Ok(KillMode::Mixed),
            "group" | "control-group" => Ok(KillMode::Group),
            _ => Err(crate::error::Error::Parse {
                what: "kill mode",
                input: s.to_owned(),
                reason: "expected mixed or group".into(),
            }),
        }
    }
}

/// Sends `sig` to one process. One that is already gone is not an error.
pub(crate) fn signal_process(pid: Pid, sig: Signal) {
    let _ = signal::kill(pid, sig);
}

/// The process group of `pid`, from `/proc` (None if it is gone).
pub(crate) fn process_group_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields after
    // the last ')' are: state, ppid, pgrp, ...
    let rest = stat.rsplit_once(')')?.1;
    let pgrp: i32 = rest.split_whitespace().nth(2)?.parse().ok()?;
    Some(Pid::from_raw(pgrp))
}

/// Sends `sig` to the worker's whole process group (the worker is its
/// leader). A group that is already gone is not an error.
pub(crate) fn signal_group(pid: Pid, sig: Signal) {
    let _ = signal::killpg(pid, sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_modes_round_trip_through_text() {
        for m in [KillMode::Mixed, KillMode::Group] {
            assert_eq!(m.to_string().parse::<KillMode>().unwrap(), m);
        }
        assert_eq!(
            "control-group".parse::<KillMode>().unwrap(),
            KillMode::Group
        );
        let e = "process".parse::<KillMode>().unwrap_err().to_string();
        assert!(e.contains("process"), "{e}");
    }

    #[test]
    fn our_own_process_group_is_read_from_proc() {
        let me = nix::unistd::getpid();
        assert_eq!(process_group_of(me), Some(nix::unistd::getpgrp()));
    }
}
