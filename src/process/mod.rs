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
pub(crate) mod command;
pub(crate) mod contract;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod os;
pub(crate) mod output;
pub(crate) mod reap;
pub(crate) mod sentinel;
pub(crate) mod spawn;
pub(crate) mod spawner;
pub(crate) mod usage;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

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
    fn our_own_process_group_is_read_from_proc() {
        let me = nix::unistd::getpid();
        assert_eq!(process_group_of(me), Some(nix::unistd::getpgrp()));
    }
}
