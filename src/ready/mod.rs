//! How the master learns that a worker is ready to serve.
//!
//! One mechanism per file: `notify` is the systemd `NOTIFY_SOCKET`
//! protocol (`READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1`), with the
//! sender's pid checked through `SO_PASSCRED`; `ipc` is Node's IPC channel
//! (`process.send('ready')`, PM2's `wait_ready` contract) for Node apps
//! run without the preload; `pipe` is the line the preload writes for Node
//! apps, wherever in the worker's process tree the app runs. A fixed delay
//! and "none" need no mechanism.

pub(crate) mod ipc;
pub(crate) mod notify;
pub(crate) mod pipe;

use nix::unistd::Pid;

pub use crate::types::{Readiness, DEFAULT_START_TIMEOUT};

/// Reads `source` line by line (each cut at `max` bytes) until EOF, an
/// error, or `on_line` returns false.
pub(crate) async fn for_each_line<R>(source: R, max: usize, mut on_line: impl FnMut(&str) -> bool)
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut lines = tokio::io::BufReader::new(source);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut lines).take(max as u64).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !on_line(&line) {
                    return;
                }
            }
        }
    }
}

/// What a worker told the master about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// It serves now.
    Ready(Pid),
    /// A watchdog ping.
    Watchdog(Pid),
    /// It began to stop on its own.
    Stopping(Pid),
    /// A free-form status line.
    Status(Pid, String),
    /// The worker's app listens, and waits to say `process.send('ready')`
    /// before it takes herd's sockets (the preload said so).
    Parked(Pid),
    /// The worker's app runs in this process of its tree (the preload
    /// said so): the stop signal goes there.
    Serving {
        /// The worker's main process.
        worker: Pid,
        /// The process that took the sockets.
        app: Pid,
    },
}

/// Turns one sd_notify datagram into notes (it may carry several fields).
pub(crate) fn parse_notify(pid: Pid, datagram: &[u8]) -> Vec<Note> {
    let text = String::from_utf8_lossy(datagram);
    text.lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Note::Ready(pid)),
            Some(("WATCHDOG", "1")) => Some(Note::Watchdog(pid)),
            Some(("STOPPING", "1")) => Some(Note::Stopping(pid)),
            Some(("STATUS", s)) => Some(Note::Status(pid, s.to_owned())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_datagrams_carry_several_fields() {
        let p = Pid::from_raw(9);
        assert_eq!(
            parse_notify(p, b"READY=1\nSTATUS=warming up\nMAINPID=9\nWATCHDOG=1"),
            vec![
                Note::Ready(p),
                Note::Status(p, "warming up".into()),
                Note::Watchdog(p)
            ]
        );
        assert!(parse_notify(p, b"READY=0\n").is_empty());
    }
}
