//! Forwarding with splice(2): bytes move from one socket to the other
//! through a pipe inside the kernel, never through the master's memory.
//!
//! It costs two syscalls per chunk instead of two copies, so it wins for
//! large transfers and loses for small request/response traffic; proxy mode
//! uses it only when asked (`Builder::proxy_splice`). `benches/throughput.rs`
//! measures both.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call: the default pipe capacity.
const CHUNK: usize = 64 * 1024;

/// Copies both directions until both are done; each direction passes its
/// EOF on as a half-close. A side that fails ends both at once and the
/// other side is reset as it closes (as the copying relay does). Returns
/// the bytes moved (to upstream, to client).
pub(crate) async fn bidirectional(
    client: &TcpStream,
    upstream: &TcpStream,
) -> io::Result<(u64, u64)> {
    let up = one_way(client, upstream);
    let down = one_way(upstream, client);
    tokio::pin!(up, down);
    let (mut sent, mut received) = (None, None);
    while sent.is_none() || received.is_none() {
        let result = tokio::select! {
            r = &mut up, if sent.is_none() => r.map(|n| sent = Some(n)),
            r = &mut down, if received.is_none() => r.map(|n| received = Some(n)),
        };
        if let Err(e) = result {
            for s in [client, upstream] {
                super::relay::Duplex::reset_on_close(s);
            }
            return Err(e);
        }
    }
    Ok((sent.unwrap_or(0), received.unwrap_or(0)))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?)
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // Socket into the pipe.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // EOF: pass the half-close on.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(to),
                nix::sys::socket::Shutdown::Write,
            );
            return Ok(total);
        }
        // The pipe into the other socket.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}
