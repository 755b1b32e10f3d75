//! The preload's readiness pipe: one per worker, its write end passed
//! among the worker's fds and found by the preload by inode.
//!
//! Only the worker's own process tree holds the write end, so whatever
//! arrives on it speaks for that worker, from whichever process the app runs
//! in (`npm start` runs it two processes below the worker). The preload
//! writes `ready <pid>`: the app is ready, and `<pid>` is the process that
//! took the sockets, which gets the stop signal; `parked <pid>` when the
//! app listens but waits for `process.send('ready')`.

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::Note;

/// The longest line kept; longer lines are skipped.
const MAX_LINE: usize = 256;

/// A new pipe: (the master's read end, the worker's write end), both
/// close-on-exec; the spawn moves the write end into place.
pub(crate) fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Only the master's end: the worker's writes stay blocking.
    nix::fcntl::fcntl(&read_end, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read_end, write_end))
}

/// What one line says: the pid of the process that is ready.
pub(crate) fn parse(line: &str) -> Option<Pid> {
    let pid: i32 = line.trim().strip_prefix("ready ")?.parse().ok()?;
    (pid > 0).then(|| Pid::from_raw(pid))
}

/// Whether one line says that the app listens but has not said ready.
pub(crate) fn is_parked(line: &str) -> bool {
    line.trim()
        .strip_prefix("parked ")
        .is_some_and(|p| p.parse::<i32>().is_ok_and(|p| p > 0))
}

/// Reads the master's end until every writer is gone, forwarding which
/// process runs the app and, when `counts` (the cluster's readiness is the
/// preload's), readiness for `worker`.
pub(crate) async fn serve(
    read_end: OwnedFd,
    worker: Pid,
    counts: bool,
    tx: mpsc::UnboundedSender<Note>,
) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) else {
        return;
    };
    super::for_each_line(pipe, MAX_LINE, |line| {
        if is_parked(line) {
            return tx.send(Note::Parked(worker)).is_ok();
        }
        let Some(app) = parse(line) else {
            return true;
        };
        let ready = counts.then_some(Note::Ready(worker));
        std::iter::once(Note::Serving { worker, app })
            .chain(ready)
            .all(|note| tx.send(note).is_ok())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_lines_with_a_pid_count() {
        assert_eq!(parse("ready 42\n"), Some(Pid::from_raw(42)));
        assert!(is_parked("parked 42\n"));
        assert!(!is_parked("parked x") && !is_parked("ready 42"));
        assert_eq!(parse("parked 42"), None);
        assert_eq!(parse("ready 0"), None);
        assert_eq!(parse("ready -1"), None);
        assert_eq!(parse("ready"), None);
        assert_eq!(parse("steady 42"), None);
    }
}
