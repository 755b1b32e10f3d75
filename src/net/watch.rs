//! Noticing a listening socket that no longer listens.
//!
//! A worker holds the very socket the master does (the same open file), so
//! `shutdown(fd 3)` in one worker (a common way to wake a thread blocked in
//! `accept`) stops it listening for everyone: a shared socket refuses every
//! connection, a slot's socket leaves the reuseport group. Such a socket
//! reports `EPOLLHUP`, which epoll delivers whatever else was asked for; the
//! watch asks only for priority data, which a listener never has, so it
//! costs nothing while all is well and wakes the master when it is not.

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Watches each of `sockets` (duplicates of the master's) and sends `()`
/// when one of them hangs up.
pub(crate) fn watch(sockets: Vec<OwnedFd>, tx: &mpsc::UnboundedSender<()>) -> Vec<JoinHandle<()>> {
    sockets
        .into_iter()
        .map(|fd| {
            let tx = tx.clone();
            tokio::spawn(async move {
                // SAFETY: OwnedFd's as_raw_fd always returns the same open
                // fd, and the AsyncFd owns it until it is dropped here.
                let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::PRIORITY) })
                else {
                    return;
                };
                if fd.ready(Interest::PRIORITY).await.is_ok() {
                    let _ = tx.send(());
                }
            })
        })
        .collect()
}
