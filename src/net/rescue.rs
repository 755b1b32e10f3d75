//! Passing on the queue of a slot that has no worker.
//!
//! Once a slot is steered out of the reuseport hash (see [`super::steer`])
//! no new connection lands on its socket, but the ones already queued there
//! would wait for a worker that may be long in coming (a long backoff) or
//! never come (a failed slot). The master accepts them and forwards each to
//! the same address, where the steering program hands it to a live slot.
//! The forwarded connection reaches the worker from the master's loopback
//! address; that is the price of not dropping it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::Socket;

/// Accepts every connection queued on `socket` without blocking.
///
/// Only for a socket no worker accepts on: it polls, then accepts, which
/// would block if another process took the connection in between.
pub(crate) fn drain_queue(socket: &Socket) -> Vec<Socket> {
    let mut taken = Vec::new();
    loop {
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(1) => {}
            _ => break,
        }
        match socket.accept() {
            Ok((conn, _)) => taken.push(conn),
            Err(_) => break,
        }
    }
    taken
}

/// Where to connect to reach the group bound to `local`: the same port on
/// loopback when it listens on every interface.
pub(crate) fn target(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// Forwards one rescued connection to `target` until both sides close.
pub(crate) async fn forward(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(true)?;
    let mut client = tokio::net::TcpStream::from_std(client)?;
    let mut upstream = tokio::net::TcpStream::connect(target).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
