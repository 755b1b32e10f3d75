//! The master's side of a worker: the private listeners it creates for
//! each worker, the connection it opens to one, and the readiness probe of
//! the PORT contract.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

use super::Target;

/// Creates a worker's private listener on loopback.
pub(crate) fn private_listener(backlog: u32) -> std::io::Result<(Socket, SocketAddr)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("private listener has no address"))?;
    Ok((socket, addr))
}

/// Creates a worker's private listener as a Unix socket at `path`, which
/// only this user may connect to (0600, in a 0700 directory).
pub(crate) fn private_unix_listener(
    path: &std::path::Path,
    backlog: u32,
) -> std::io::Result<Socket> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// A port on loopback that is free now, for a worker that binds `PORT`
/// itself (the PORT contract).
pub(crate) fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// How often the readiness probe tries to connect.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Connects to `addr` until it answers, then reports `pid` ready. Gives up
/// when nobody listens for the notes any more; the start timeout bounds it.
pub(crate) async fn probe(
    addr: SocketAddr,
    pid: nix::unistd::Pid,
    notes: mpsc::UnboundedSender<crate::ready::Note>,
) {
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            let _ = notes.send(crate::ready::Note::Ready(pid));
            return;
        }
        if notes.is_closed() {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// A connection to a worker's private listener (proxy mode relays it;
/// HTTP mode pools it).
pub(crate) enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Upstream {
    pub(crate) async fn open(target: &Target) -> std::io::Result<Upstream> {
        Ok(match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                let _ = s.set_nodelay(true);
                Upstream::Tcp(s)
            }
            Target::Unix(path) => Upstream::Unix(UnixStream::connect(path).await?),
        })
    }
}
