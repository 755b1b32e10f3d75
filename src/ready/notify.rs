//! The systemd notify protocol: a datagram socket whose path workers find
//! in `NOTIFY_SOCKET`.
//!
//! The socket lives in the abstract namespace (no file to clean up) and has
//! `SO_PASSCRED` on, so every datagram arrives with the sender's pid as the
//! kernel saw it. Only datagrams from a current worker's main process count
//! (systemd's `NotifyAccess=main`); anything else, a foreign process or a
//! worker's child, is ignored.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::{parse_notify, Note};

/// The largest datagram read; systemd accepts up to this much too.
const MAX_DATAGRAM: usize = 4096;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The master's notify socket.
pub(crate) struct NotifySocket {
    fd: AsyncFd<OwnedFd>,
    /// The value of `NOTIFY_SOCKET` for workers (`@` marks abstract).
    pub(crate) env_value: String,
}

impl NotifySocket {
    /// Binds a fresh abstract socket. Must run inside the runtime.
    pub(crate) fn bind() -> io::Result<Self> {
        let name = format!(
            "herd/{}/{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes())?)?;
        // SAFETY: the OwnedFd is open, and as_raw_fd returns that same fd for
        // as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(NotifySocket {
            fd,
            env_value: format!("@{name}"),
        })
    }

    /// The notify socket a previous master handed on (an upgrade): its
    /// workers keep sending to the same name.
    pub(crate) fn adopt(fd: OwnedFd, env_value: String) -> io::Result<Self> {
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: as in `bind`.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(NotifySocket { fd, env_value })
    }

    /// A duplicate of the socket, kept for an upgrade.
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        self.fd.get_ref().try_clone()
    }

    /// Forwards every note to `tx`, with the sender's pid from its
    /// credentials, until `tx` closes.
    pub(crate) async fn serve(self, tx: mpsc::UnboundedSender<Note>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return;
            };
            match guard.try_io(|fd| receive(fd.get_ref(), &mut buf)) {
                Ok(Ok(Some((pid, len)))) => {
                    for note in parse_notify(pid, &buf[..len]) {
                        if tx.send(note).is_err() {
                            return;
                        }
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(_)) | Err(_) => {}
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

/// Reads one datagram; returns the sender's pid and the length, or None for
/// a datagram without credentials.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(Pid, usize)>> {
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes.min(MAX_DATAGRAM);
    let pid = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmCredentials(cred) => Some(Pid::from_raw(cred.pid())),
            _ => None,
        })
    });
    Ok(pid.map(|p| (p, len)))
}
