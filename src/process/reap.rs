//! Waiting for exactly one child through its pidfd.
//!
//! Never `waitpid(-1)`: a program that embeds herd may own other children.
//! The pidfd becomes readable when the child exits; until we reap it, its pid
//! (and process group id) cannot be recycled, so signalling the group right
//! before reaping is race-free.

use std::io;
use std::os::fd::OwnedFd;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::signal_group;
use crate::types::Exit;

/// Waits until `pid` exits, SIGKILLs whatever is left of its process group,
/// and reaps it.
pub(crate) async fn wait(pid: Pid, pidfd: OwnedFd) -> io::Result<Exit> {
    // SAFETY: OwnedFd's as_raw_fd always returns the same open fd, and the
    // AsyncFd owns it until it is dropped at the end of this function.
    let fd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(fd) => fd,
        // The reactor would not take it (out of resources): wait on a
        // blocking thread instead, so the child is still reaped.
        Err(_) => return wait_blocking(pid).await,
    };
    loop {
        let mut ready = fd.readable().await?;
        // The child is a zombie now: its group id is still reserved, so the
        // leftovers (children the worker started) are killed, not strangers.
        signal_group(pid, Signal::SIGKILL);
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(Exit::Signal(crate::Signal::from_nix(sig)))
            }
            Ok(_) => ready.clear_ready(),
            Err(nix::errno::Errno::EINTR) => ready.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn wait_blocking(pid: Pid) -> io::Result<Exit> {
    let status = tokio::task::spawn_blocking(move || loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    })
    .await
    .map_err(io::Error::other)??;
    signal_group(pid, Signal::SIGKILL);
    match status {
        WaitStatus::Exited(_, code) => Ok(Exit::Code(code)),
        WaitStatus::Signaled(_, sig, _) => Ok(Exit::Signal(crate::Signal::from_nix(sig))),
        other => Err(io::Error::other(format!(
            "unexpected wait status {other:?}"
        ))),
    }
}
