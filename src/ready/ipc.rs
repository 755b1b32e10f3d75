//! Node's IPC channel: a socketpair whose child end the worker finds in
//! `NODE_CHANNEL_FD`.
//!
//! Node speaks newline-delimited JSON on it (`NODE_CHANNEL_SERIALIZATION_MODE
//! =json`); `process.send('ready')` arrives as the line `"ready"`, which is
//! PM2's `wait_ready` contract. The master only listens; every other message
//! is ignored.

use std::io;
use std::os::fd::OwnedFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::Note;

/// The longest message line kept; longer lines are skipped.
const MAX_LINE: usize = 64 * 1024;

/// A new channel: (the master's end, the worker's end). Both close-on-exec;
/// the spawn moves the worker's end into place.
pub(crate) fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Whether one message line says "ready".
pub(crate) fn is_ready(line: &str) -> bool {
    matches!(line.trim(), "\"ready\"" | "{\"type\":\"ready\"}")
}

/// Reads the master's end until EOF, forwarding `ready` for `pid`.
pub(crate) async fn serve(master_end: OwnedFd, pid: Pid, tx: mpsc::UnboundedSender<Note>) {
    let std_stream = std::os::unix::net::UnixStream::from(master_end);
    if std_stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(stream) = tokio::net::UnixStream::from_std(std_stream) else {
        return;
    };
    super::for_each_line(stream, MAX_LINE, |line| {
        !is_ready(line) || tx.send(Note::Ready(pid)).is_ok()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_messages_count() {
        assert!(is_ready("\"ready\"\n"));
        assert!(is_ready("{\"type\":\"ready\"}"));
        assert!(!is_ready("{\"cmd\":\"NODE_HANDLE\"}"));
        assert!(!is_ready("\"not ready\""));
    }
}
