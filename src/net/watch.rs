//! Noticing a listening socket that no longer listens, without waking on
//! every connection.
//!
//! A worker holds the very socket the master does (the same open file), so
//! `shutdown(fd 3)` in one worker (a common way to wake a thread blocked in
//! `accept`) stops it listening for everyone: a shared socket refuses every
//! connection, a slot's socket leaves the reuseport group. Such a socket
//! reports `EPOLLHUP`.
//!
//! The sockets go into an epoll set of their own with no event asked for:
//! epoll always reports `EPOLLHUP` and `EPOLLERR`, and the kernel's wake-up
//! for a new connection (`EPOLLIN | EPOLLPRI`) matches nothing, so it never
//! reaches the set. Only that set's fd is registered with tokio, and it
//! becomes readable when a socket hangs up. (Registering each socket with
//! tokio for priority data, as herd did before, woke the master for every
//! connection: the new-connection wake-up carries `EPOLLPRI` in its key,
//! so epoll woke the master, polled the socket, found nothing and slept
//! again, 30,000 times in 3 seconds of load.)

use std::os::fd::OwnedFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Watches `sockets` (duplicates of the master's) and sends `()` when one
/// of them hangs up.
pub(crate) fn watch(sockets: Vec<OwnedFd>, tx: &mpsc::UnboundedSender<()>) -> Vec<JoinHandle<()>> {
    let tx = tx.clone();
    vec![tokio::spawn(async move {
        let Ok(set) = hangups(&sockets) else {
            return;
        };
        // SAFETY: the set is an OwnedFd, whose as_raw_fd always returns
        // the same open fd, and the AsyncFd owns it until it is dropped
        // here.
        let Ok(set) = (unsafe { AsyncFd::register_with_interest(set, Interest::READABLE) }) else {
            return;
        };
        if set.readable().await.is_ok() {
            let _ = tx.send(());
        }
        // The sockets stay open (and in the set) until here.
        drop(sockets);
    })]
}

/// An epoll set that is readable once one of `sockets` hangs up, and on
/// nothing else.
fn hangups(sockets: &[OwnedFd]) -> nix::Result<OwnedFd> {
    let set = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, fd) in sockets.iter().enumerate() {
        set.add(fd, EpollEvent::new(EpollFlags::empty(), i as u64))?;
    }
    Ok(set.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_listener_shut_down_is_noticed_and_connections_are_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fd = OwnedFd::from(listener.try_clone().unwrap());
        let tasks = watch(vec![fd], &tx);
        // Connections wait in the queue: no hang-up.
        let _clients: Vec<_> = (0..20)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "a connection was taken for a hang-up"
        );
        nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            nix::sys::socket::Shutdown::Both,
        )
        .unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(heard.ok().flatten(), Some(()), "the hang-up was missed");
        for t in tasks {
            t.abort();
        }
    }
}
