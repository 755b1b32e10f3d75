//! Passing on the queue of a slot that has no worker.
//!
//! Once a slot is steered out of the reuseport hash (see [`super::steer`])
//! no new connection lands on its socket, but the ones already queued there
//! would wait for a worker that may be long in coming (a long backoff) or
//! never come (a failed slot). The master accepts them and forwards each to
//! the same address, where the steering program hands it to a live slot.
//! The forwarded connection reaches the worker from the master's loopback
//! address; that is the price of not dropping it.
//!
//! Such a relay may last as long as the client keeps its connection, and
//! an upgrade in place replaces the master's process image: the relays
//! are paused (each between two writes, so no byte read is left unsent),
//! their two sockets carried to the next master, which resumes them. Before,
//! an upgrade closed every kept-alive connection the master relayed (found
//! by the soak).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::Socket;

use crate::upgrade::Carried;

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

/// Forwards one rescued connection to `target` until both sides close,
/// or until the relays are paused for an upgrade.
pub(crate) async fn forward(
    client: TcpStream,
    target: SocketAddr,
    relays: Arc<Relays>,
) -> io::Result<()> {
    client.set_nonblocking(true)?;
    let client = tokio::net::TcpStream::from_std(client)?;
    let upstream = tokio::net::TcpStream::connect(target).await?;
    relay(client, upstream, relays).await;
    Ok(())
}

/// The master's relays of rescued connections: how many run, and the
/// sockets of those paused for an upgrade.
#[derive(Debug)]
pub(crate) struct Relays {
    pause: tokio::sync::watch::Sender<bool>,
    running: AtomicUsize,
    /// Told each time a relay stops (paused or ended).
    stopped: tokio::sync::Notify,
    paused: Mutex<Vec<(OwnedFd, OwnedFd)>>,
}

impl Default for Relays {
    fn default() -> Self {
        Relays {
            pause: tokio::sync::watch::channel(false).0,
            running: AtomicUsize::new(0),
            stopped: tokio::sync::Notify::new(),
            paused: Mutex::new(Vec::new()),
        }
    }
}

/// The prefix of the keys a relay's two sockets are carried under
/// (`herd.relay.<n>.client`, `herd.relay.<n>.upstream`).
const CARRY_PREFIX: &str = "herd.relay.";

impl Relays {
    /// Pauses every relay (each at its next point with nothing in hand)
    /// and returns their sockets, client first; a relay still writing
    /// after `limit` goes on, and ends with this process.
    pub(crate) async fn pause_all(&self, limit: Duration) -> Vec<(OwnedFd, OwnedFd)> {
        self.pause.send_replace(true);
        let deadline = tokio::time::Instant::now() + limit;
        while self.running.load(Ordering::Acquire) > 0 {
            // Each relay that stops says so (a permit is kept if it comes
            // before this wait).
            if tokio::time::timeout_at(deadline, self.stopped.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        std::mem::take(&mut *self.paused.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Pauses every relay and hands their sockets to the next master
    /// through `carried`; returns them, to [`Relays::resume`] if the
    /// upgrade fails (after [`Relays::uncarry`]).
    pub(crate) async fn carry(
        &self,
        carried: &Carried,
        limit: Duration,
    ) -> Vec<(OwnedFd, OwnedFd)> {
        let relayed = self.pause_all(limit).await;
        for (i, (client, upstream)) in relayed.iter().enumerate() {
            for (side, fd) in [("client", client), ("upstream", upstream)] {
                if let Ok(dup) = fd.try_clone() {
                    carried.carry(&format!("{CARRY_PREFIX}{i}.{side}"), dup);
                }
            }
        }
        relayed
    }

    /// The upgrade failed: the relays' sockets no longer go anywhere.
    pub(crate) fn uncarry(carried: &Carried) {
        carried.forget_prefixed(CARRY_PREFIX);
    }

    /// Takes up the relays the previous master carried.
    pub(crate) fn adopt(self: &Arc<Self>, carried: &Carried) {
        let mut pairs = std::collections::BTreeMap::<String, [Option<OwnedFd>; 2]>::new();
        for (key, fd) in carried.take_prefixed(CARRY_PREFIX) {
            let (index, side) = key.split_once('.').unwrap_or((&key, ""));
            pairs.entry(index.to_owned()).or_default()[usize::from(side == "upstream")] = Some(fd);
        }
        self.resume(
            pairs
                .into_values()
                .filter_map(|[c, u]| Some((c?, u?)))
                .collect(),
        );
    }

    /// Takes up relays again: those paused for an upgrade that failed, or
    /// those the previous master carried.
    pub(crate) fn resume(self: &Arc<Self>, pairs: Vec<(OwnedFd, OwnedFd)>) {
        self.pause.send_replace(false);
        for (client, upstream) in pairs {
            let to_tokio = |fd: OwnedFd| {
                let s = TcpStream::from(fd);
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            };
            if let (Ok(c), Ok(u)) = (to_tokio(client), to_tokio(upstream)) {
                tokio::spawn(relay(c, u, self.clone()));
            }
        }
    }
}

/// Copies bytes both ways until both sides have ended (each end passed
/// on as a half-close), or until paused: it stops only with nothing read
/// and not yet written, and leaves its two sockets in `relays`.
async fn relay(
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    relays: Arc<Relays>,
) {
    relays.running.fetch_add(1, Ordering::AcqRel);
    let mut pause = relays.pause.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    // Whether each side may still send.
    let (mut from_client, mut from_upstream) = (true, true);
    while from_client || from_upstream {
        let (from, to, open) = tokio::select! {
            biased;
            _ = pause.wait_for(|p| *p) => {
                if let (Ok(c), Ok(u)) = (client.into_std(), upstream.into_std()) {
                    relays
                        .paused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((c.into(), u.into()));
                }
                relays.running.fetch_sub(1, Ordering::AcqRel);
                relays.stopped.notify_one();
                return;
            }
            r = client.readable(), if from_client => match r {
                Ok(()) => (&client, &upstream, &mut from_client),
                Err(_) => break,
            },
            r = upstream.readable(), if from_upstream => match r {
                Ok(()) => (&upstream, &client, &mut from_upstream),
                Err(_) => break,
            },
        };
        match from.try_read(&mut buf) {
            Ok(0) => {
                *open = false;
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            Ok(n) => {
                if write_all(to, &buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    relays.running.fetch_sub(1, Ordering::AcqRel);
    relays.stopped.notify_one();
}

async fn write_all(to: &tokio::net::TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
